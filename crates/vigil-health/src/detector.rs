//! The failure detector: per-agent state, deadline scheduling, zone partitions.

use std::collections::VecDeque;

use hashbrown::HashMap;

use crate::phi::y_for;
use crate::wheel::Wheel;

/// Detector settings.
#[derive(Debug, Clone)]
pub struct DetectorConfig {
    /// Phi at which an agent turns suspect (Akka's default 8).
    pub suspect_phi: f64,
    /// Phi at which a suspect agent is declared failed.
    pub fail_phi: f64,
    /// Silence accepted on top of the expected interval before phi grows (ms).
    pub acceptable_pause_ms: f64,
    /// Floor of the inter-arrival standard deviation (ms), so a perfectly regular agent is not
    /// convicted on the first late packet.
    pub min_std_ms: f64,
    /// Floor of the standard deviation relative to the mean interval.
    pub min_std_ratio: f64,
    /// Hard bound: failed no later than this many intervals after the last heartbeat.
    pub hard_bound_intervals: f64,
    /// Cap of the hard bound (ms).
    pub hard_bound_cap_ms: i64,
    /// Share of a zone's monitored agents turning suspect within `partition_window_ms` that
    /// makes it a suspected partition.
    pub partition_ratio: f64,
    /// The window for `partition_ratio` (ms).
    pub partition_window_ms: i64,
    /// Zones smaller than this are never considered partitioned.
    pub partition_min_agents: usize,
    /// Timer resolution (ms).
    pub tick_ms: i64,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            suspect_phi: 8.0,
            fail_phi: 16.0,
            acceptable_pause_ms: 0.0,
            min_std_ms: 100.0,
            min_std_ratio: 0.05,
            hard_bound_intervals: 3.0,
            hard_bound_cap_ms: 180_000,
            partition_ratio: 0.5,
            partition_window_ms: 10_000,
            partition_min_agents: 4,
            tick_ms: 100,
        }
    }
}

/// An agent's health state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum State {
    /// Known (e.g. from before a restart) but not heard from since.
    Unknown,
    /// Heartbeats arrive as expected.
    Healthy,
    /// Heartbeats arrive, but the agent reports failing checks.
    Degraded,
    /// Silent for longer than its history makes likely.
    Suspect,
    /// Declared dead.
    Failed,
    /// Heard from again after being declared dead; healthy on its next heartbeat.
    Recovered,
    /// Silent while its zone is suspected to be cut off: not judged failed.
    Unreachable,
    /// In a maintenance window: not judged.
    Maintenance,
}

impl State {
    /// Lower-case name, as the API prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Unknown => "unknown",
            State::Healthy => "healthy",
            State::Degraded => "degraded",
            State::Suspect => "suspect",
            State::Failed => "failed",
            State::Recovered => "recovered",
            State::Unreachable => "unreachable",
            State::Maintenance => "maintenance",
        }
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    /// An agent changed state.
    State {
        /// Before.
        from: State,
        /// After.
        to: State,
    },
    /// Many agents of a zone went silent together: a partition is suspected.
    PartitionSuspected {
        /// The zone.
        zone: u32,
        /// How many agents turned suspect within the window.
        silent: usize,
        /// Agents monitored in the zone.
        members: usize,
    },
    /// Heartbeats from the zone resumed.
    PartitionEnded {
        /// The zone.
        zone: u32,
    },
    /// The agent's sequence number went back: it restarted.
    Restarted,
}

/// An event at a time (ms); `agent` is the detector's index of the agent (for zone events,
/// the agent whose heartbeat or silence triggered it).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Agent index.
    pub agent: u32,
    /// When (ms).
    pub at: i64,
    /// What.
    pub kind: EventKind,
}

/// A heartbeat as the detector sees it.
#[derive(Debug, Clone, Copy)]
pub struct Beat {
    /// Sequence number, monotonic per agent run.
    pub seq: u64,
    /// The agent's clock when sent (ms).
    pub sent_at: i64,
    /// The agent's declared interval (ms).
    pub interval_ms: u32,
    /// Whether the agent reports failing checks.
    pub degraded: bool,
}

/// Per-agent state: 96 bytes.
#[derive(Debug, Clone)]
pub struct Agent {
    /// Last arrival (our clock, ms); `i64::MIN` before the first.
    pub last_ms: i64,
    /// When the current state began (ms).
    pub since_ms: i64,
    /// Moment the agent turns suspect (ms).
    suspect_at: i64,
    /// Moment it is declared failed (ms).
    fail_at: i64,
    /// Tick the timer wheel holds for it, `i64::MAX` if none.
    wheel_tick: i64,
    /// Last sequence number.
    pub last_seq: u64,
    /// Declared interval (ms).
    pub interval_ms: u32,
    /// Inter-arrival mean (ms, EWMA).
    pub mean_ms: f32,
    /// Inter-arrival variance (ms², EWMA).
    pub var_ms2: f32,
    /// Mean absolute deviation of arrivals from the declared interval (ms, EWMA).
    pub jitter_ms: f32,
    /// Arrival minus `sent_at` (ms, EWMA): clock offset plus one-way delay.
    pub offset_ms: f32,
    /// Heartbeats received.
    pub received: u32,
    /// Heartbeats missing from gaps in `seq`.
    pub lost: u32,
    /// Restarts seen (seq went back).
    pub restarts: u32,
    /// Zone index.
    pub zone: u32,
    /// Network-segment group index (a group like a zone), `u32::MAX` if none.
    pub segment: u32,
    /// State.
    pub state: State,
    /// End of a maintenance window (ms), `i64::MIN` if none.
    in_maintenance_until: i64,
}

impl Agent {
    fn new(zone: u32, interval_ms: u32, now: i64) -> Self {
        let i = interval_ms.max(1) as f32;
        Self {
            last_ms: i64::MIN,
            since_ms: now,
            suspect_at: i64::MAX,
            fail_at: i64::MAX,
            wheel_tick: i64::MAX,
            last_seq: 0,
            interval_ms,
            mean_ms: i,
            var_ms2: (i / 4.0) * (i / 4.0),
            jitter_ms: 0.0,
            offset_ms: 0.0,
            received: 0,
            lost: 0,
            restarts: 0,
            zone,
            segment: u32::MAX,
            state: State::Unknown,
            in_maintenance_until: i64::MIN,
        }
    }

    /// Loss ratio from sequence gaps.
    pub fn loss(&self) -> f64 {
        let total = self.received as f64 + self.lost as f64;
        if total == 0.0 {
            0.0
        } else {
            self.lost as f64 / total
        }
    }
}

#[derive(Debug, Default)]
struct Zone {
    members: Vec<u32>,
    /// (time, interval class) of agents of the zone turning suspect, oldest first.
    recent_suspects: VecDeque<(i64, u8)>,
    /// `recent_suspects` counted per class.
    recent_counts: [u32; 32],
    partitioned_since: Option<i64>,
    /// Monitored agents (heard from, not failed or in maintenance) per interval class.
    monitored: [u32; 32],
}

/// Agents whose intervals differ by less than 2× share a class: a partition silences a
/// class within about one of its intervals, so fast agents are compared with fast agents.
fn class_of(interval_ms: u32) -> u8 {
    (31 - interval_ms.max(1).leading_zeros()) as u8
}

fn is_monitored(s: State) -> bool {
    matches!(
        s,
        State::Healthy | State::Degraded | State::Recovered | State::Suspect | State::Unreachable
    )
}

/// The detector for one environment. Not thread-safe by itself: the caller serialises calls
/// (a shard per core scales it).
#[derive(Debug)]
pub struct Detector {
    cfg: DetectorConfig,
    y_suspect: f64,
    y_fail: f64,
    agents: Vec<Agent>,
    zones: Vec<Zone>,
    zone_ids: HashMap<String, u32, foldhash::fast::RandomState>,
    wheel: Wheel,
    events: Vec<Event>,
}

const ALPHA: f32 = 0.125;

impl Detector {
    /// A detector whose clock starts at `now` (ms).
    pub fn new(cfg: DetectorConfig, now: i64) -> Self {
        let y_suspect = y_for(cfg.suspect_phi);
        let y_fail = y_for(cfg.fail_phi.max(cfg.suspect_phi));
        let wheel = Wheel::new(cfg.tick_ms.max(1), now);
        Self {
            cfg,
            y_suspect,
            y_fail,
            agents: Vec::new(),
            zones: Vec::new(),
            zone_ids: HashMap::default(),
            wheel,
            events: Vec::new(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &DetectorConfig {
        &self.cfg
    }

    /// The index of zone `name`, created if new.
    pub fn zone(&mut self, name: &str) -> u32 {
        if let Some(&z) = self.zone_ids.get(name) {
            return z;
        }
        let z = self.zones.len() as u32;
        self.zones.push(Zone::default());
        self.zone_ids.insert(name.to_string(), z);
        z
    }

    /// Registers an agent in a zone and a network-segment group (from [`Detector::zone`] too;
    /// a segment is judged for partitions like a zone).
    pub fn add_agent_in(
        &mut self,
        zone: u32,
        segment: Option<u32>,
        interval_ms: u32,
        now: i64,
    ) -> u32 {
        let id = self.add_agent(zone, interval_ms, now);
        if let Some(sg) = segment
            && sg != zone
        {
            self.agents[id as usize].segment = sg;
            self.zones[sg as usize].members.push(id);
        }
        id
    }

    fn groups_of(&self, id: u32) -> impl Iterator<Item = u32> + use<> {
        let a = &self.agents[id as usize];
        let seg = (a.segment != u32::MAX).then_some(a.segment);
        std::iter::once(a.zone).chain(seg)
    }

    /// Registers an agent (new, or known from before a restart: then pass its last interval).
    /// It starts `Unknown`; if no heartbeat comes it turns suspect after two intervals and
    /// failed after the hard bound, both counted from `now`, so a restart of Vigil does not
    /// declare the fleet dead.
    pub fn add_agent(&mut self, zone: u32, interval_ms: u32, now: i64) -> u32 {
        let id = self.agents.len() as u32;
        let mut a = Agent::new(zone, interval_ms, now);
        let i = interval_ms.max(1) as i64;
        a.suspect_at = now + 2 * i;
        a.fail_at = now + self.hard_bound(interval_ms);
        self.agents.push(a);
        self.zones[zone as usize].members.push(id);
        self.schedule(id);
        id
    }

    /// Agent by index.
    pub fn agent(&self, id: u32) -> &Agent {
        &self.agents[id as usize]
    }

    /// Number of agents.
    pub fn len(&self) -> usize {
        self.agents.len()
    }

    /// Whether there are no agents.
    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    /// Current phi of an agent at `now`.
    pub fn phi(&self, id: u32, now: i64) -> f64 {
        let a = &self.agents[id as usize];
        if a.last_ms == i64::MIN {
            return 0.0;
        }
        let y = (now - a.last_ms) as f64 - a.mean_ms as f64 - self.cfg.acceptable_pause_ms;
        crate::phi::phi_of(y / self.std(a))
    }

    fn std(&self, a: &Agent) -> f64 {
        (a.var_ms2.max(0.0) as f64)
            .sqrt()
            .max(self.cfg.min_std_ms)
            .max(self.cfg.min_std_ratio * a.mean_ms as f64)
    }

    fn hard_bound(&self, interval_ms: u32) -> i64 {
        ((self.cfg.hard_bound_intervals * interval_ms as f64) as i64)
            .min(self.cfg.hard_bound_cap_ms)
    }

    /// Takes the events produced since the last call.
    pub fn drain_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    fn set_state(&mut self, id: u32, to: State, at: i64) {
        let a = &mut self.agents[id as usize];
        if a.state == to {
            return;
        }
        let from = a.state;
        a.state = to;
        a.since_ms = at;
        if is_monitored(from) != is_monitored(to) {
            let c = class_of(a.interval_ms) as usize;
            let groups: Vec<u32> = self.groups_of(id).collect();
            for g in groups {
                let n = &mut self.zones[g as usize].monitored[c];
                *n = if is_monitored(to) {
                    *n + 1
                } else {
                    n.saturating_sub(1)
                };
            }
        }
        self.events.push(Event {
            agent: id,
            at,
            kind: EventKind::State { from, to },
        });
    }

    /// Records a heartbeat arriving at `now`.
    pub fn heartbeat(&mut self, id: u32, b: Beat, now: i64) {
        self.advance(now);
        let cfg_y_s = self.y_suspect;
        let cfg_y_f = self.y_fail;
        let pause = self.cfg.acceptable_pause_ms;
        let a = &mut self.agents[id as usize];
        // Sequence: gaps are loss, going back is a restart.
        let mut restarted = false;
        if a.received > 0 {
            if b.seq > a.last_seq {
                a.lost = a
                    .lost
                    .saturating_add((b.seq - a.last_seq - 1).min(u32::MAX as u64) as u32);
            } else if b.seq < a.last_seq {
                a.restarts = a.restarts.saturating_add(1);
                restarted = true;
            } else {
                // A duplicate: counts as arrival, not as a new interval sample.
                return;
            }
        }
        a.last_seq = b.seq;
        a.received = a.received.saturating_add(1);
        // Interval change: start the statistics over at the new interval.
        if b.interval_ms != a.interval_ms && b.interval_ms > 0 {
            if is_monitored(a.state) {
                let seg = (a.segment != u32::MAX).then_some(a.segment);
                for g in std::iter::once(a.zone).chain(seg) {
                    let z = &mut self.zones[g as usize];
                    let old = &mut z.monitored[class_of(a.interval_ms) as usize];
                    *old = old.saturating_sub(1);
                    z.monitored[class_of(b.interval_ms) as usize] += 1;
                }
            }
            let i = b.interval_ms as f32;
            a.interval_ms = b.interval_ms;
            a.mean_ms = i;
            a.var_ms2 = (i / 4.0) * (i / 4.0);
        } else if a.last_ms != i64::MIN && !restarted {
            let x = (now - a.last_ms) as f32;
            let d = x - a.mean_ms;
            a.mean_ms += ALPHA * d;
            a.var_ms2 = (1.0 - ALPHA) * (a.var_ms2 + ALPHA * d * d);
            a.jitter_ms += ALPHA * ((x - a.interval_ms as f32).abs() - a.jitter_ms);
        }
        let off = (now - b.sent_at) as f32;
        a.offset_ms = if a.received == 1 {
            off
        } else {
            a.offset_ms + ALPHA * (off - a.offset_ms)
        };
        a.last_ms = now;
        // Deadlines.
        let std = (a.var_ms2.max(0.0) as f64)
            .sqrt()
            .max(self.cfg.min_std_ms)
            .max(self.cfg.min_std_ratio * a.mean_ms as f64);
        let base = now as f64 + a.mean_ms as f64 + pause;
        let hard = now
            + ((self.cfg.hard_bound_intervals * a.interval_ms as f64) as i64)
                .min(self.cfg.hard_bound_cap_ms);
        // Suspect as soon as phi says so; failed when phi is far higher, but never before one
        // more interval has passed (so the rest of a cut-off zone has the time to go silent
        // too and the partition is recognised), and never after the hard bound.
        let suspect = (base + cfg_y_s * std) as i64;
        let fail = ((base + cfg_y_f * std) as i64).max(suspect + a.mean_ms as i64);
        a.fail_at = fail.min(hard);
        a.suspect_at = suspect.min(a.fail_at);
        let zone = a.zone;
        let state = a.state;
        let in_maint = a.in_maintenance_until > now;
        if restarted {
            self.events.push(Event {
                agent: id,
                at: now,
                kind: EventKind::Restarted,
            });
        }
        // A heartbeat from a cut-off zone (or segment) ends its partition.
        if state == State::Unreachable {
            let _ = zone;
            let groups: Vec<u32> = self.groups_of(id).collect();
            for g in groups {
                if self.zones[g as usize].partitioned_since.is_some() {
                    self.end_partition(g, id, now);
                }
            }
        }
        let to = if in_maint {
            State::Maintenance
        } else {
            match state {
                State::Failed => State::Recovered,
                _ if b.degraded => State::Degraded,
                _ => State::Healthy,
            }
        };
        self.set_state(id, to, now);
        self.schedule(id);
    }

    /// Puts an agent in maintenance until `until` (ms): it is not judged meanwhile.
    pub fn maintenance(&mut self, id: u32, until: i64, now: i64) {
        self.advance(now);
        let a = &mut self.agents[id as usize];
        a.in_maintenance_until = until;
        self.set_state(id, State::Maintenance, now);
        self.schedule(id);
    }

    /// Stops judging an agent for good (it was deregistered): no more events, not counted in
    /// its zone. Its index is not reused.
    pub fn retire(&mut self, id: u32, now: i64) {
        self.advance(now);
        self.agents[id as usize].in_maintenance_until = i64::MAX;
        let before = self.events.len();
        self.set_state(id, State::Maintenance, now);
        self.events.truncate(before);
        self.agents[id as usize].wheel_tick = i64::MAX;
    }

    /// The next moment the agent must be looked at, if any.
    fn next_deadline(&self, a: &Agent) -> Option<i64> {
        match a.state {
            State::Maintenance => Some(a.in_maintenance_until),
            State::Unknown | State::Healthy | State::Degraded | State::Recovered => {
                Some(a.suspect_at)
            }
            State::Suspect | State::Unreachable => Some(a.fail_at),
            State::Failed => None,
        }
    }

    fn schedule(&mut self, id: u32) {
        let Some(d) = self.next_deadline(&self.agents[id as usize]) else {
            return;
        };
        if d == i64::MAX {
            return;
        }
        let tick = self.wheel.tick_of(d);
        let a = &mut self.agents[id as usize];
        // Keep at most one live entry: an earlier one is re-checked when it fires.
        if a.wheel_tick <= tick {
            return;
        }
        a.wheel_tick = tick;
        self.wheel.insert(tick, id);
    }

    /// Moves time to `now`, firing every deadline due. Call it on a timer (e.g. every tick);
    /// heartbeats call it too.
    pub fn advance(&mut self, now: i64) {
        let mut due = Vec::new();
        while let Some(tick) = self.wheel.next_due(now, &mut due) {
            for id in due.drain(..) {
                let a = &mut self.agents[id as usize];
                if a.wheel_tick != tick {
                    continue; // superseded
                }
                a.wheel_tick = i64::MAX;
                let at = self.wheel.time_of(tick);
                self.check(id, at);
                self.schedule(id);
            }
        }
    }

    fn check(&mut self, id: u32, at: i64) {
        let a = &self.agents[id as usize];
        let zone = a.zone;
        match a.state {
            State::Maintenance => {
                if at >= a.in_maintenance_until {
                    // Out of maintenance: judged again from now on, with a full interval of grace.
                    let i = a.interval_ms.max(1) as i64;
                    let hb = self.hard_bound(a.interval_ms);
                    let a = &mut self.agents[id as usize];
                    a.suspect_at = at + 2 * i;
                    a.fail_at = at + hb;
                    let next = if a.last_ms == i64::MIN {
                        State::Unknown
                    } else {
                        State::Healthy
                    };
                    self.set_state(id, next, at);
                }
            }
            State::Unknown | State::Healthy | State::Degraded | State::Recovered => {
                if at >= a.suspect_at {
                    let fail_at = a.fail_at;
                    self.set_state(id, State::Suspect, at);
                    self.note_suspect(zone, id, at);
                    if self.agents[id as usize].state == State::Suspect && at >= fail_at {
                        self.fail(id, zone, at);
                    }
                }
            }
            State::Suspect | State::Unreachable => {
                if at >= a.fail_at {
                    self.fail(id, zone, at);
                }
            }
            State::Failed => {}
        }
    }

    fn fail(&mut self, id: u32, _zone: u32, at: i64) {
        let cut_off = self
            .groups_of(id)
            .any(|g| self.zones[g as usize].partitioned_since.is_some());
        if cut_off {
            if self.agents[id as usize].state != State::Unreachable {
                self.set_state(id, State::Unreachable, at);
            }
            // Judged once the zone is heard from again.
            self.agents[id as usize].fail_at = i64::MAX;
        } else {
            self.set_state(id, State::Failed, at);
        }
    }

    fn note_suspect(&mut self, _zone: u32, id: u32, at: i64) {
        let groups: Vec<u32> = self.groups_of(id).collect();
        for g in groups {
            if self.agents[id as usize].state != State::Suspect {
                break;
            }
            self.note_suspect_in(g, id, at);
        }
    }

    fn note_suspect_in(&mut self, zone: u32, id: u32, at: i64) {
        // Agents of a zone go silent spread over their interval: the window covers it.
        let window = self
            .cfg
            .partition_window_ms
            .max(self.agents[id as usize].interval_ms as i64 * 6 / 5);
        let class = class_of(self.agents[id as usize].interval_ms);
        {
            let z = &mut self.zones[zone as usize];
            z.recent_suspects.push_back((at, class));
            z.recent_counts[class as usize] += 1;
            while let Some(&(t, c)) = z.recent_suspects.front() {
                if t >= at - window {
                    break;
                }
                z.recent_suspects.pop_front();
                z.recent_counts[c as usize] = z.recent_counts[c as usize].saturating_sub(1);
            }
            if z.partitioned_since.is_some() {
                let a = &mut self.agents[id as usize];
                a.fail_at = i64::MAX;
                self.set_state(id, State::Unreachable, at);
                return;
            }
        }
        let z = &self.zones[zone as usize];
        let silent = z.recent_counts[class as usize] as usize;
        let members = z.monitored[class as usize] as usize;
        if members >= self.cfg.partition_min_agents
            && silent >= self.cfg.partition_min_agents.min(members)
            && silent as f64 >= self.cfg.partition_ratio * members as f64
        {
            self.zones[zone as usize].partitioned_since = Some(at);
            self.events.push(Event {
                agent: id,
                at,
                kind: EventKind::PartitionSuspected {
                    zone,
                    silent,
                    members,
                },
            });
            let suspects: Vec<u32> = self.zones[zone as usize]
                .members
                .iter()
                .copied()
                .filter(|&m| self.agents[m as usize].state == State::Suspect)
                .collect();
            for m in suspects {
                self.agents[m as usize].fail_at = i64::MAX;
                self.set_state(m, State::Unreachable, at);
            }
        }
    }

    fn end_partition(&mut self, zone: u32, by: u32, at: i64) {
        self.zones[zone as usize].partitioned_since = None;
        self.zones[zone as usize].recent_suspects.clear();
        self.zones[zone as usize].recent_counts = [0; 32];
        self.events.push(Event {
            agent: by,
            at,
            kind: EventKind::PartitionEnded { zone },
        });
        // Everyone the partition silenced gets until their next expected heartbeat (plus one
        // interval) to speak up: the unreachable ones, and those not yet judged whose last
        // heartbeat predates the heal.
        let members = self.zones[zone as usize].members.clone();
        for m in members {
            let a = &mut self.agents[m as usize];
            if m == by || a.last_ms >= at {
                continue;
            }
            let i = a.interval_ms.max(1) as i64;
            match a.state {
                State::Unreachable => a.fail_at = at + 2 * i,
                State::Healthy | State::Degraded | State::Recovered | State::Suspect => {
                    a.fail_at = a.fail_at.max(at + 2 * i);
                    a.suspect_at = a.suspect_at.max(at + i + i / 2).min(a.fail_at);
                }
                _ => continue,
            }
            self.schedule(m);
        }
    }

    /// Groups (zones and segments) currently suspected to be partitioned.
    pub fn partitioned_groups(&self) -> Vec<u32> {
        (0..self.zones.len() as u32)
            .filter(|&g| self.zones[g as usize].partitioned_since.is_some())
            .collect()
    }

    /// Whether `zone` is currently suspected to be partitioned.
    pub fn partitioned(&self, zone: u32) -> bool {
        self.zones[zone as usize].partitioned_since.is_some()
    }

    /// Counts of agents per state.
    pub fn counts(&self) -> HashMap<State, usize> {
        let mut m = HashMap::new();
        for a in &self.agents {
            *m.entry(a.state).or_default() += 1;
        }
        m
    }
}

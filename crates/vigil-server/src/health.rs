//! The agent registry and failure detection, per environment: heartbeats feed a
//! [`vigil_health::Detector`]; a ticker advances it, keeps recent events in memory and flushes
//! the registry and the state history to the metadata store in batches.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use hashbrown::HashMap;
use parking_lot::{Mutex, RwLock};
use serde::Deserialize;
use vigil_health::{Beat, Detector, DetectorConfig, Event, EventKind, State};
use vigil_meta::{AgentEventRecord, AgentRecord, Meta};

/// Most recent events kept in memory per environment.
const RECENT_EVENTS: usize = 10_000;
/// The heartbeat label naming an agent's network segment.
pub const SEGMENT_LABEL: &str = "segment";
/// Events buffered for live-stream subscribers that fall behind.
const STREAM_BUFFER: usize = 8_192;

/// An event as the live stream publishes it.
#[derive(Debug, Clone)]
pub struct StreamEvent {
    /// Environment.
    pub env: String,
    /// Zone of the agent (or of the partition).
    pub zone: String,
    /// The event.
    pub record: AgentEventRecord,
}

/// A heartbeat as sent over HTTP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// Agent id: 1–128 characters of `A-Za-z0-9._:-`.
    pub agent_id: String,
    /// Sequence number, monotonic per agent run.
    pub seq: u64,
    /// The agent's clock when sent, ms since the epoch.
    pub sent_at: i64,
    /// Heartbeat interval, 1,000–60,000 ms.
    pub interval_ms: u32,
    /// Zone (default `default`).
    #[serde(default)]
    pub zone: Option<String>,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Agent version.
    #[serde(default)]
    pub version: Option<String>,
    /// `ok` (default) or `degraded`.
    #[serde(default)]
    pub status: Option<String>,
    /// Why degraded.
    #[serde(default)]
    pub message: Option<String>,
    /// Self-checks.
    #[serde(default)]
    pub checks: Vec<Check>,
}

/// A self-check reported by an agent.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    /// Check name.
    pub name: String,
    /// `ok`, `warn` or `fail`.
    pub status: String,
    /// Detail.
    #[serde(default)]
    pub message: Option<String>,
}

/// A field that is wrong, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field, e.g. `interval_ms` or `checks[2].status`.
    pub field: String,
    /// Why.
    pub reason: String,
}

fn bad(field: &str, reason: impl Into<String>) -> FieldError {
    FieldError {
        field: field.to_string(),
        reason: reason.into(),
    }
}

fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'-'))
}

impl Heartbeat {
    /// Checks every field; the first problem is reported.
    pub fn validate(&self) -> Result<(), FieldError> {
        if !valid_id(&self.agent_id) {
            return Err(bad(
                "agent_id",
                "must be 1-128 characters of letters, digits, '.', '_', ':' or '-'",
            ));
        }
        if !(1_000..=60_000).contains(&self.interval_ms) {
            return Err(bad("interval_ms", "must be between 1000 and 60000"));
        }
        if self.sent_at <= 0 {
            return Err(bad(
                "sent_at",
                "must be a positive time in ms since the epoch",
            ));
        }
        if let Some(z) = &self.zone
            && !valid_id(z)
        {
            return Err(bad(
                "zone",
                "must be 1-128 characters of letters, digits, '.', '_', ':' or '-'",
            ));
        }
        if self.labels.len() > 32 {
            return Err(bad("labels", "at most 32 labels"));
        }
        for (k, v) in &self.labels {
            if !vigil_model::is_valid_label_name(k) {
                return Err(bad(&format!("labels.{k}"), "is not a valid label name"));
            }
            if v.len() > 1024 {
                return Err(bad(&format!("labels.{k}"), "value longer than 1024 bytes"));
            }
        }
        match self.status.as_deref() {
            None | Some("ok") | Some("degraded") => {}
            Some(_) => return Err(bad("status", "must be \"ok\" or \"degraded\"")),
        }
        if self.version.as_ref().is_some_and(|v| v.len() > 128) {
            return Err(bad("version", "longer than 128 bytes"));
        }
        if self.message.as_ref().is_some_and(|v| v.len() > 4096) {
            return Err(bad("message", "longer than 4096 bytes"));
        }
        if self.checks.len() > 64 {
            return Err(bad("checks", "at most 64 checks"));
        }
        for (i, c) in self.checks.iter().enumerate() {
            if c.name.is_empty() || c.name.len() > 128 {
                return Err(bad(&format!("checks[{i}].name"), "must be 1-128 bytes"));
            }
            if !matches!(c.status.as_str(), "ok" | "warn" | "fail") {
                return Err(bad(
                    &format!("checks[{i}].status"),
                    "must be \"ok\", \"warn\" or \"fail\"",
                ));
            }
        }
        Ok(())
    }

    fn degraded(&self) -> bool {
        self.status.as_deref() == Some("degraded") || self.checks.iter().any(|c| c.status == "fail")
    }
}

/// An agent failure, from detection to recovery.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Incident {
    /// Agent id.
    pub agent_id: String,
    /// Zone.
    pub zone: String,
    /// Last heartbeat before the failure, ms.
    pub last_seen_ms: i64,
    /// When it was declared failed, ms.
    pub failed_at_ms: i64,
    /// Time to detect: `failed_at - last_seen`, ms.
    pub ttd_ms: i64,
    /// When it was heard from again, ms.
    pub recovered_at_ms: Option<i64>,
    /// Time to recover: `recovered_at - failed_at`, ms.
    pub ttr_ms: Option<i64>,
}

/// What the registry knows of an agent besides the detector's numbers.
#[derive(Debug, Clone)]
pub struct AgentInfo {
    /// Agent id.
    pub id: String,
    /// Zone name.
    pub zone: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Version.
    pub version: String,
    /// Status message.
    pub message: Option<String>,
    /// Latest checks.
    pub checks: Vec<Check>,
    /// First heartbeat, ms.
    pub first_seen_ms: i64,
    /// Latest heartbeat, ms (or from the registry after a restart).
    pub last_seen_ms: i64,
    /// Deregistered: kept only so indices stay stable.
    pub retired: bool,
    /// `last_seen_ms` as last written to the registry (it is refreshed there at most every
    /// [`SEEN_PERSIST_MS`], not on every heartbeat).
    pub saved_seen_ms: i64,
}

/// How often an agent's `last_seen` is written to the registry when nothing else about it
/// changes: a flush every 2 s then writes only new and changed agents, not the whole fleet.
pub const SEEN_PERSIST_MS: i64 = 60_000;

/// One environment's fleet.
pub struct EnvFleet {
    env: String,
    tx: tokio::sync::broadcast::Sender<Arc<StreamEvent>>,
    /// The detector.
    pub det: Detector,
    ids: HashMap<String, u32>,
    /// Agent details by detector index.
    pub info: Vec<AgentInfo>,
    zone_names: Vec<String>,
    dirty: Vec<u32>,
    dirty_mark: Vec<bool>,
    /// Recent events (oldest first).
    pub recent: VecDeque<AgentEventRecord>,
    unsaved: Vec<AgentEventRecord>,
    /// Incidents (an agent failed; closed when it recovers), newest last, at most 10,000.
    pub incidents: VecDeque<Incident>,
    /// Deregistered ids not yet deleted by a flush (a flush that read them before the
    /// deregistration must not bring them back).
    removed: Vec<String>,
}

impl std::fmt::Debug for EnvFleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EnvFleet({} agents)", self.info.len())
    }
}

impl EnvFleet {
    fn new(
        env: &str,
        tx: tokio::sync::broadcast::Sender<Arc<StreamEvent>>,
        cfg: DetectorConfig,
        now: i64,
    ) -> Self {
        Self {
            env: env.to_string(),
            tx,
            det: Detector::new(cfg, now),
            ids: HashMap::new(),
            info: Vec::new(),
            zone_names: Vec::new(),
            dirty: Vec::new(),
            dirty_mark: Vec::new(),
            recent: VecDeque::new(),
            unsaved: Vec::new(),
            removed: Vec::new(),
            incidents: VecDeque::new(),
        }
    }

    /// Indices of registered (not deregistered) agents.
    pub fn live(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.info.len() as u32).filter(|&i| !self.info[i as usize].retired)
    }

    /// Forgets an agent: it is no longer judged, listed or counted; a later heartbeat
    /// registers it anew. Returns whether it was known.
    pub fn deregister(&mut self, id: &str, now: i64) -> bool {
        let Some(idx) = self.ids.remove(id) else {
            return false;
        };
        self.info[idx as usize].retired = true;
        self.det.retire(idx, now);
        self.removed.push(id.to_string());
        true
    }

    /// The detector index of an agent id.
    pub fn index(&self, id: &str) -> Option<u32> {
        self.ids.get(id).copied()
    }

    /// A zone's name.
    pub fn zone_name(&self, z: u32) -> &str {
        self.zone_names.get(z as usize).map_or("", |s| s)
    }

    fn zone(&mut self, name: &str) -> u32 {
        let z = self.det.zone(name);
        if z as usize >= self.zone_names.len() {
            self.zone_names.push(name.to_string());
        }
        z
    }

    fn register(&mut self, info: AgentInfo, interval_ms: u32, now: i64) -> u32 {
        let z = self.zone(&info.zone.clone());
        // Agents sharing a `segment` label form a group judged for partitions like a zone.
        let seg = info
            .labels
            .get(SEGMENT_LABEL)
            .map(|v| format!("{SEGMENT_LABEL}/{v}"))
            .map(|name| self.zone(&name));
        let idx = self.det.add_agent_in(z, seg, interval_ms, now);
        self.ids.insert(info.id.clone(), idx);
        self.info.push(info);
        self.dirty_mark.push(false);
        idx
    }

    fn mark_dirty(&mut self, idx: u32) {
        if !self.dirty_mark[idx as usize] {
            self.dirty_mark[idx as usize] = true;
            self.dirty.push(idx);
        }
    }

    /// Applies one validated heartbeat arriving at `now`.
    pub fn heartbeat(&mut self, hb: &Heartbeat, now: i64) {
        self.apply(hb, now);
        self.collect(now);
    }

    /// Counts a metrics push naming `agent` (in `zone`) as its heartbeat: the next sequence
    /// number, the agent's known interval or `interval_ms`. Ids that are not valid agent ids
    /// are ignored.
    pub fn metrics_heartbeat(
        &mut self,
        agent: &str,
        zone: Option<&str>,
        interval_ms: u32,
        now: i64,
    ) {
        if !valid_id(agent) {
            return;
        }
        let (seq, interval) = match self.index(agent) {
            Some(i) => {
                let a = self.det.agent(i);
                (a.last_seq + 1, a.interval_ms)
            }
            None => (1, interval_ms),
        };
        let hb = Heartbeat {
            agent_id: agent.to_string(),
            seq,
            sent_at: now,
            interval_ms: interval,
            zone: zone.filter(|z| valid_id(z)).map(str::to_string),
            labels: BTreeMap::new(),
            version: None,
            status: None,
            message: None,
            checks: Vec::new(),
        };
        self.apply(&hb, now);
    }

    /// Collects events now (after a series of `metrics_heartbeat` calls).
    pub fn flush_events(&mut self, now: i64) {
        self.collect(now);
    }

    /// Applies many validated heartbeats, collecting events once.
    pub fn heartbeats(&mut self, hbs: &[Heartbeat], now: i64) {
        for hb in hbs {
            self.apply(hb, now);
        }
        self.collect(now);
    }

    fn apply(&mut self, hb: &Heartbeat, now: i64) {
        let idx = match self.index(&hb.agent_id) {
            Some(i) => i,
            None => self.register(
                AgentInfo {
                    id: hb.agent_id.clone(),
                    zone: hb.zone.clone().unwrap_or_else(|| "default".into()),
                    labels: hb.labels.clone(),
                    version: String::new(),
                    message: None,
                    checks: Vec::new(),
                    first_seen_ms: now,
                    last_seen_ms: now,
                    retired: false,
                    saved_seen_ms: i64::MIN,
                },
                hb.interval_ms,
                now,
            ),
        };
        let interval_before = self.det.agent(idx).interval_ms;
        let mut changed = false;
        {
            let info = &mut self.info[idx as usize];
            info.last_seen_ms = now;
            if !hb.labels.is_empty() && info.labels != hb.labels {
                info.labels = hb.labels.clone();
                changed = true;
            }
            if let Some(v) = &hb.version
                && info.version != *v
            {
                info.version = v.clone();
                changed = true;
            }
            if info.message != hb.message {
                info.message = hb.message.clone();
            }
            if !(info.checks.is_empty() && hb.checks.is_empty()) {
                info.checks = hb.checks.clone();
            }
        }
        self.det.heartbeat(
            idx,
            Beat {
                seq: hb.seq,
                sent_at: hb.sent_at,
                interval_ms: hb.interval_ms,
                degraded: hb.degraded(),
            },
            now,
        );
        changed |= self.det.agent(idx).interval_ms != interval_before;
        let info = &self.info[idx as usize];
        if changed || now.saturating_sub(info.saved_seen_ms) >= SEEN_PERSIST_MS {
            self.mark_dirty(idx);
        }
    }

    /// Puts every agent matching all given selectors in maintenance until `until`; returns how
    /// many. `until` in the past ends their maintenance at the next tick.
    pub fn maintenance(
        &mut self,
        agent: Option<&str>,
        zone: Option<&str>,
        labels: &BTreeMap<String, String>,
        until: i64,
        now: i64,
    ) -> usize {
        let chosen: Vec<u32> = self
            .live()
            .filter(|&i| {
                let info = &self.info[i as usize];
                agent.is_none_or(|a| info.id == a)
                    && zone.is_none_or(|z| info.zone == z)
                    && labels.iter().all(|(k, v)| info.labels.get(k) == Some(v))
            })
            .collect();
        for &i in &chosen {
            self.det.maintenance(i, until, now);
        }
        self.collect(now);
        chosen.len()
    }

    /// Advances detection to `now` and collects events.
    pub fn tick(&mut self, now: i64) {
        self.det.advance(now);
        self.collect(now);
    }

    fn collect(&mut self, _now: i64) {
        for e in self.det.drain_events() {
            let mut rec = self.record(&e);
            if let EventKind::State { from, to } = e.kind {
                let info = &self.info[e.agent as usize];
                if to == State::Failed {
                    let last = self.det.agent(e.agent).last_ms;
                    let last = if last == i64::MIN {
                        info.last_seen_ms
                    } else {
                        last
                    };
                    rec.detail = format!("time to detect {} ms", e.at - last);
                    if self.incidents.len() >= 10_000 {
                        self.incidents.pop_front();
                    }
                    self.incidents.push_back(Incident {
                        agent_id: info.id.clone(),
                        zone: info.zone.clone(),
                        last_seen_ms: last,
                        failed_at_ms: e.at,
                        ttd_ms: e.at - last,
                        recovered_at_ms: None,
                        ttr_ms: None,
                    });
                } else if from == State::Failed
                    && let Some(inc) = self
                        .incidents
                        .iter_mut()
                        .rev()
                        .find(|i| i.agent_id == info.id && i.recovered_at_ms.is_none())
                {
                    inc.recovered_at_ms = Some(e.at);
                    inc.ttr_ms = Some(e.at - inc.failed_at_ms);
                    rec.detail = format!("time to recover {} ms", e.at - inc.failed_at_ms);
                }
            }
            if self.tx.receiver_count() > 0 {
                let zone = match &e.kind {
                    EventKind::PartitionSuspected { zone, .. }
                    | EventKind::PartitionEnded { zone } => self.zone_name(*zone).to_string(),
                    _ => self
                        .info
                        .get(e.agent as usize)
                        .map_or_else(String::new, |i| i.zone.clone()),
                };
                let mut r = rec.clone();
                r.env = self.env.clone();
                let _ = self.tx.send(Arc::new(StreamEvent {
                    env: self.env.clone(),
                    zone,
                    record: r,
                }));
            }
            if self.recent.len() >= RECENT_EVENTS {
                self.recent.pop_front();
            }
            self.recent.push_back(rec.clone());
            self.unsaved.push(rec);
        }
    }

    fn record(&self, e: &Event) -> AgentEventRecord {
        let agent_id = self
            .info
            .get(e.agent as usize)
            .map_or_else(String::new, |i| i.id.clone());
        let (kind, from, to, detail) = match &e.kind {
            EventKind::State { from, to } => (
                "state",
                Some(from.as_str().to_string()),
                Some(to.as_str().to_string()),
                String::new(),
            ),
            EventKind::PartitionSuspected {
                zone,
                silent,
                members,
            } => (
                "partition_suspected",
                None,
                None,
                format!(
                    "zone {}: {silent} of {members} agents went silent together",
                    self.zone_name(*zone)
                ),
            ),
            EventKind::PartitionEnded { zone } => (
                "partition_ended",
                None,
                None,
                format!("zone {}", self.zone_name(*zone)),
            ),
            EventKind::Restarted => ("restarted", None, None, String::new()),
        };
        AgentEventRecord {
            env: String::new(),
            agent_id,
            at_ms: e.at,
            kind: kind.to_string(),
            from_state: from,
            to_state: to,
            detail,
        }
    }
}

/// Every environment's fleet.
#[derive(Debug)]
pub struct Fleet {
    cfg: DetectorConfig,
    tx: tokio::sync::broadcast::Sender<Arc<StreamEvent>>,
    envs: RwLock<HashMap<String, Arc<Mutex<EnvFleet>>>>,
    meta: Arc<Meta>,
}

impl Fleet {
    /// Loads the registry: every known agent starts `unknown` and is judged only after its
    /// next expected heartbeats.
    pub fn load(meta: Arc<Meta>, cfg: DetectorConfig, now: i64) -> Result<Self, vigil_meta::Error> {
        let (tx, _) = tokio::sync::broadcast::channel(STREAM_BUFFER);
        let f = Self {
            cfg,
            tx,
            envs: RwLock::new(HashMap::new()),
            meta,
        };
        for r in f.meta.agents()? {
            let env = f.env(&r.env, now);
            let mut e = env.lock();
            let labels: BTreeMap<String, String> =
                serde_json::from_str(&r.labels).unwrap_or_default();
            let interval = r.interval_ms.clamp(1_000, 60_000) as u32;
            e.register(
                AgentInfo {
                    id: r.agent_id,
                    zone: r.zone,
                    labels,
                    version: r.version,
                    message: None,
                    checks: Vec::new(),
                    first_seen_ms: r.first_seen_ms,
                    last_seen_ms: r.last_seen_ms,
                    retired: false,
                    saved_seen_ms: r.last_seen_ms,
                },
                interval,
                now,
            );
        }
        Ok(f)
    }

    /// The fleet of `env`, created if new.
    pub fn env(&self, env: &str, now: i64) -> Arc<Mutex<EnvFleet>> {
        if let Some(e) = self.envs.read().get(env) {
            return e.clone();
        }
        self.envs
            .write()
            .entry(env.to_string())
            .or_insert_with(|| {
                Arc::new(Mutex::new(EnvFleet::new(
                    env,
                    self.tx.clone(),
                    self.cfg.clone(),
                    now,
                )))
            })
            .clone()
    }

    /// Subscribes to every environment's events (filter on `env`).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<StreamEvent>> {
        self.tx.subscribe()
    }

    /// Environments with a fleet.
    pub fn env_names(&self) -> Vec<String> {
        self.envs.read().keys().cloned().collect()
    }

    /// The fleet of `env` if it has one.
    pub fn get(&self, env: &str) -> Option<Arc<Mutex<EnvFleet>>> {
        self.envs.read().get(env).cloned()
    }

    /// Advances every environment to `now`.
    pub fn tick(&self, now: i64) {
        let envs: Vec<Arc<Mutex<EnvFleet>>> = self.envs.read().values().cloned().collect();
        for e in envs {
            e.lock().tick(now);
        }
    }

    /// [`Fleet::flush`] at shutdown: every agent's latest `last_seen` is written too.
    pub fn flush_final(&self) -> Result<(usize, usize), vigil_meta::Error> {
        let envs: Vec<Arc<Mutex<EnvFleet>>> = self.envs.read().values().cloned().collect();
        for e in envs {
            let mut e = e.lock();
            for idx in 0..e.info.len() as u32 {
                let i = &e.info[idx as usize];
                if !i.retired && i.last_seen_ms != i.saved_seen_ms {
                    e.mark_dirty(idx);
                }
            }
        }
        self.flush()
    }

    /// Writes new and changed agents (and `last_seen` at most every [`SEEN_PERSIST_MS`]) and
    /// new events to the metadata store.
    pub fn flush(&self) -> Result<(usize, usize), vigil_meta::Error> {
        let mut agents = Vec::new();
        let mut events = Vec::new();
        let mut removed = Vec::new();
        let envs: Vec<(String, Arc<Mutex<EnvFleet>>)> = self
            .envs
            .read()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (name, e) in envs {
            let mut e = e.lock();
            let dirty = std::mem::take(&mut e.dirty);
            for idx in dirty {
                e.dirty_mark[idx as usize] = false;
                if e.info[idx as usize].retired {
                    continue;
                }
                let seen = e.info[idx as usize].last_seen_ms;
                e.info[idx as usize].saved_seen_ms = seen;
                let a = e.det.agent(idx);
                let i = &e.info[idx as usize];
                agents.push(AgentRecord {
                    env: name.clone(),
                    agent_id: i.id.clone(),
                    zone: i.zone.clone(),
                    labels: serde_json::to_string(&i.labels).unwrap_or_else(|_| "{}".into()),
                    interval_ms: a.interval_ms as i64,
                    version: i.version.clone(),
                    first_seen_ms: i.first_seen_ms,
                    last_seen_ms: i.last_seen_ms,
                });
            }
            for id in std::mem::take(&mut e.removed) {
                removed.push((name.clone(), id));
            }
            for mut ev in std::mem::take(&mut e.unsaved) {
                ev.env = name.clone();
                events.push(ev);
            }
        }
        if !agents.is_empty() {
            self.meta.upsert_agents(&agents)?;
        }
        if !events.is_empty() {
            self.meta.insert_agent_events(&events)?;
        }
        for (env, id) in &removed {
            // Unless it came back since (a new heartbeat registers it again).
            let back = self.get(env).is_some_and(|e| e.lock().index(id).is_some());
            if !back {
                self.meta.delete_agent(env, id)?;
            }
        }
        Ok((agents.len(), events.len()))
    }

    /// One sample per agent of `vigil_agent_up` (1 when heard from as expected: healthy,
    /// degraded or recovered), `vigil_agent_phi` and `vigil_agent_loss_ratio`, labelled with
    /// `agent` and `zone`, for every environment: PromQL and Grafana chart the fleet from these.
    pub fn fleet_series(
        &self,
        now: i64,
        limits: &vigil_model::LabelLimits,
    ) -> Vec<vigil_tsdb::WriteBatch> {
        let envs: Vec<(String, Arc<Mutex<EnvFleet>>)> = self
            .envs
            .read()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut out = Vec::new();
        for (name, e) in envs {
            let Ok(env) = vigil_model::EnvId::new(&name) else {
                continue;
            };
            let mut b = vigil_tsdb::WriteBatch::new(env);
            let e = e.lock();
            for i in e.live() {
                let a = e.det.agent(i);
                let info = &e.info[i as usize];
                let up = matches!(a.state, State::Healthy | State::Degraded | State::Recovered);
                let phi = e.det.phi(i, now).min(1000.0);
                for (metric, v) in [
                    ("vigil_agent_up", if up { 1.0 } else { 0.0 }),
                    ("vigil_agent_phi", phi),
                    ("vigil_agent_loss_ratio", a.loss()),
                ] {
                    b.push_label("__name__", metric);
                    b.push_label("agent", &info.id);
                    b.push_label("zone", &info.zone);
                    b.push_sample(now, v);
                    // Ids and zones are validated on the way in; a refusal only skips a series.
                    let _ = b.finish_series(limits);
                }
            }
            if !b.is_empty() {
                out.push(b);
            }
        }
        out
    }

    /// Records the outcome of a recovery action in the agent's history.
    pub fn record_recovery(&self, env: &str, agent: &str, detail: String) {
        let Some(e) = self.get(env) else { return };
        let mut e = e.lock();
        let rec = AgentEventRecord {
            env: String::new(),
            agent_id: agent.to_string(),
            at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
            kind: "recovery".into(),
            from_state: None,
            to_state: None,
            detail,
        };
        if e.recent.len() >= RECENT_EVENTS {
            e.recent.pop_front();
        }
        e.recent.push_back(rec.clone());
        e.unsaved.push(rec);
    }

    /// The stored history of an agent, newest first.
    pub fn history(
        &self,
        env: &str,
        agent: &str,
        limit: usize,
    ) -> Result<Vec<AgentEventRecord>, vigil_meta::Error> {
        self.meta.agent_events(env, agent, limit)
    }
}

/// Up and down time (ms) of one agent, zone or environment over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Uptime {
    /// Time heard from (healthy, degraded, recovered) or not yet judged down (suspect).
    pub up_ms: i64,
    /// Time failed or unreachable.
    pub down_ms: i64,
}

impl Uptime {
    /// `up / (up + down)`; `None` when no time counted (unknown or in maintenance throughout).
    pub fn ratio(&self) -> Option<f64> {
        let t = self.up_ms + self.down_ms;
        (t > 0).then(|| self.up_ms as f64 / t as f64)
    }

    fn add(&mut self, o: Uptime) {
        self.up_ms += o.up_ms;
        self.down_ms += o.down_ms;
    }
}

fn count_state(u: &mut Uptime, state: &str, ms: i64) {
    match state {
        "healthy" | "degraded" | "recovered" | "suspect" => u.up_ms += ms,
        "failed" | "unreachable" => u.down_ms += ms,
        _ => {} // unknown, maintenance: not counted
    }
}

/// Availability over one window: per agent, per zone, for the environment.
#[derive(Debug, Clone, Default)]
pub struct Availability {
    /// Per agent id.
    pub agents: BTreeMap<String, Uptime>,
    /// Per zone.
    pub zones: BTreeMap<String, Uptime>,
    /// The environment.
    pub total: Uptime,
}

impl Fleet {
    /// Availability of `env`'s registered agents over `[now - window_ms, now]`, from the stored
    /// state history (call [`Fleet::flush`] first so the newest changes count).
    pub fn availability(
        &self,
        env: &str,
        now: i64,
        window_ms: i64,
    ) -> Result<Availability, vigil_meta::Error> {
        let since = now - window_ms;
        let before: HashMap<String, String> =
            self.meta.states_before(env, since)?.into_iter().collect();
        let changes = self.meta.state_changes_since(env, since)?;
        let Some(fleet) = self.get(env) else {
            return Ok(Availability::default());
        };
        let zones: HashMap<String, String> = {
            let f = fleet.lock();
            f.live()
                .map(|i| {
                    (
                        f.info[i as usize].id.clone(),
                        f.info[i as usize].zone.clone(),
                    )
                })
                .collect()
        };
        let mut out = Availability::default();
        let mut by_agent: HashMap<&str, Vec<(i64, &str)>> = HashMap::new();
        for (a, at, to) in &changes {
            by_agent
                .entry(a.as_str())
                .or_default()
                .push((*at, to.as_str()));
        }
        for (agent, zone) in &zones {
            let mut u = Uptime::default();
            let mut state = before.get(agent).map_or("unknown", |s| s.as_str());
            let mut t = since;
            for &(at, to) in by_agent
                .get(agent.as_str())
                .map_or(&[][..], |v| v.as_slice())
            {
                count_state(&mut u, state, at.min(now) - t);
                state = to;
                t = at.min(now);
            }
            count_state(&mut u, state, now - t);
            out.total.add(u);
            out.zones.entry(zone.clone()).or_default().add(u);
            out.agents.insert(agent.clone(), u);
        }
        Ok(out)
    }
}

/// `State` by its API name.
pub fn parse_state(s: &str) -> Option<State> {
    [
        State::Unknown,
        State::Healthy,
        State::Degraded,
        State::Suspect,
        State::Failed,
        State::Recovered,
        State::Unreachable,
        State::Maintenance,
    ]
    .into_iter()
    .find(|st| st.as_str() == s)
}

//! Alerting at run time: owns the rule groups, the threshold engine, the dispatcher and the
//! silences; runs the evaluation loop on its own thread and the delivery worker on tokio.
//!
//! Data flow: ingest threads call [`Alerting::on_batch`] (threshold rules, sample by sample)
//! and the health stream feeds health rules; both queue alert transitions and wake the loop.
//! The loop also evaluates due rule groups, then hands every transition to the dispatcher,
//! flushes due groups into notifications, and writes alert state, dispatcher state, history and
//! the outbox rows in one metadata transaction. The delivery worker sends outbox rows with
//! retries (exponential backoff with jitter) and dead-letters them after the last attempt.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use hashbrown::HashMap;
use parking_lot::{Mutex, RwLock};
use serde_json::json;
use vigil_alert::dispatch::{Notification, Tracked};
use vigil_alert::rules::{EvalOutput, RecordSink};
use vigil_alert::{
    Alert, AlertState, Dispatcher, LabelMap, NotifyConfig, RuleFile, RuleGroup, Silence, Silences,
    ThresholdEngine, ThresholdRule, Transition, payload,
};
use vigil_meta::{AlertTx, DocOp, HistoryRecord, Meta, OutboxNew, OutboxRow};
use vigil_model::{Clock, EnvId};
use vigil_tsdb::{Db, WriteBatch};

use crate::config::AlertingOptions;
use crate::health::{Fleet, StreamEvent};

/// Counters for `/metrics` and the analytics API.
#[derive(Debug, Default)]
pub struct AlertStats {
    /// Rule group evaluations.
    pub evaluations: AtomicU64,
    /// Rule evaluations that failed.
    pub evaluation_failures: AtomicU64,
    /// Notifications by (receiver, channel, outcome `delivered`/`retry`/`dead`).
    pub deliveries: Mutex<BTreeMap<(String, String, &'static str), u64>>,
    /// Firing transitions by alertname.
    pub fired: Mutex<BTreeMap<String, u64>>,
    /// Per alertname: (resolutions, sum of firing durations in s, acknowledgements, sum of
    /// times to acknowledge in s, state changes).
    pub per_rule: Mutex<BTreeMap<String, RuleTally>>,
    /// Notifications queued.
    pub queued: AtomicU64,
}

/// Counters of one alertname for `/metrics` (MTTA = ack_seconds / acks, MTTR likewise,
/// flapping = rate of `changes`).
#[derive(Debug, Default, Clone, Copy)]
pub struct RuleTally {
    /// Resolutions of firing alerts.
    pub resolved: u64,
    /// Sum of firing → resolved durations (s).
    pub resolve_seconds: f64,
    /// Acknowledgements.
    pub acks: u64,
    /// Sum of firing → acknowledged durations (s).
    pub ack_seconds: f64,
    /// Firing and resolved transitions.
    pub changes: u64,
}

/// An API-loaded rule file.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Namespace {
    /// Environment.
    pub env: String,
    /// Name.
    pub name: String,
    /// The YAML as uploaded.
    pub yaml: String,
}

/// Everything alerting holds.
pub struct Alerting {
    meta: Arc<Meta>,
    opts: AlertingOptions,
    clock: Arc<dyn Clock>,
    /// Threshold rules (evaluated on ingest).
    pub thresholds: ThresholdEngine,
    groups: Mutex<Vec<RuleGroup>>,
    file_stamps: Mutex<Vec<(PathBuf, Option<SystemTime>)>>,
    namespaces: Mutex<BTreeMap<(String, String), Namespace>>,
    dispatcher: Mutex<Dispatcher>,
    notify_cfg: RwLock<NotifyConfig>,
    lifecycle: Mutex<HashMap<u64, Alert>>,
    queue: Mutex<Vec<(Alert, Transition)>>,
    wake: Mutex<Option<std::sync::mpsc::Sender<()>>>,
    /// Wakes the delivery worker.
    pub deliver_wake: tokio::sync::Notify,
    /// Counters.
    pub stats: AlertStats,
    silences: Mutex<Vec<Silence>>,
    reload: AtomicBool,
    last_series: Mutex<HashMap<u64, (String, LabelMap)>>,
    /// A step's write that failed, retried (first) with the next step.
    unsaved: Mutex<Option<AlertTx>>,
}

impl std::fmt::Debug for Alerting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Alerting({} threshold rules)", self.thresholds.len())
    }
}

fn fp_hex(fp: u64) -> String {
    format!("{fp:016x}")
}

/// Parses an alert fingerprint as the API prints it (16 hex digits).
pub fn parse_fp(s: &str) -> Option<u64> {
    u64::from_str_radix(s, 16).ok()
}

fn load_rule_file(path: &std::path::Path) -> Result<RuleFile, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    RuleFile::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn stamp(p: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn history(a: &Alert, event: &str, at: i64, by: Option<String>) -> HistoryRecord {
    HistoryRecord {
        env: a.env.clone(),
        fingerprint: fp_hex(a.fingerprint),
        alertname: a.labels.get("alertname").cloned().unwrap_or_default(),
        source: a.source.clone(),
        event: event.into(),
        at_ms: at,
        by,
    }
}

impl Alerting {
    /// Loads rule files, API-managed rules, thresholds, silences and the state saved before a
    /// restart. A bad rule file is an error here (the server does not start half-configured).
    pub fn load(
        meta: Arc<Meta>,
        opts: AlertingOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, String> {
        let now = clock.now_ms();
        let dispatcher = Dispatcher::new(&opts.notify)?;
        let a = Alerting {
            meta: meta.clone(),
            clock,
            thresholds: ThresholdEngine::new(),
            groups: Mutex::new(Vec::new()),
            file_stamps: Mutex::new(Vec::new()),
            namespaces: Mutex::new(BTreeMap::new()),
            dispatcher: Mutex::new(dispatcher),
            notify_cfg: RwLock::new(opts.notify.clone()),
            lifecycle: Mutex::new(HashMap::new()),
            queue: Mutex::new(Vec::new()),
            wake: Mutex::new(None),
            deliver_wake: tokio::sync::Notify::new(),
            stats: AlertStats::default(),
            silences: Mutex::new(Vec::new()),
            reload: AtomicBool::new(false),
            last_series: Mutex::new(HashMap::new()),
            unsaved: Mutex::new(None),
            opts,
        };
        let err = |e: vigil_meta::Error| e.to_string();
        // Threshold rules.
        let mut th = Vec::new();
        for (_, env, body) in meta.docs("threshold").map_err(err)? {
            let r: ThresholdRule =
                serde_json::from_str(&body).map_err(|e| format!("stored threshold rule: {e}"))?;
            th.push((env, r));
        }
        a.thresholds.load(th)?;
        // API rule namespaces.
        for (_, _, body) in meta.docs("rules").map_err(err)? {
            let ns: Namespace =
                serde_json::from_str(&body).map_err(|e| format!("stored rule namespace: {e}"))?;
            a.namespaces
                .lock()
                .insert((ns.env.clone(), ns.name.clone()), ns);
        }
        let groups = a.build_groups()?;
        *a.groups.lock() = groups;
        // Silences.
        let mut sil = Vec::new();
        for (_, _, body) in meta.docs("silence").map_err(err)? {
            if let Ok(s) = serde_json::from_str::<Silence>(&body) {
                sil.push(s);
            }
        }
        *a.silences.lock() = sil;
        a.refresh_silences();
        // Alert lifecycles.
        let mut alerts = Vec::new();
        for (_, _, body) in meta.docs("alert").map_err(err)? {
            if let Ok(al) = serde_json::from_str::<Alert>(&body) {
                alerts.push(al);
            }
        }
        for g in a.groups.lock().iter_mut() {
            g.restore(&alerts);
        }
        a.thresholds.restore(&alerts);
        {
            let mut lc = a.lifecycle.lock();
            for al in alerts {
                lc.insert(al.fingerprint, al);
            }
        }
        // Dispatcher state.
        let tracked: Vec<Tracked> = meta
            .docs("tracked")
            .map_err(err)?
            .into_iter()
            .filter_map(|(_, _, b)| serde_json::from_str(&b).ok())
            .collect();
        let groups: Vec<vigil_alert::dispatch::Group> = meta
            .docs("group")
            .map_err(err)?
            .into_iter()
            .filter_map(|(_, _, b)| serde_json::from_str(&b).ok())
            .collect();
        a.dispatcher.lock().restore(tracked, groups);
        tracing::info!(
            groups = a.groups.lock().len(),
            thresholds = a.thresholds.len(),
            alerts = a.lifecycle.lock().len(),
            now,
            "Alerting loaded."
        );
        Ok(Arc::new(a))
    }

    /// The options.
    pub fn options(&self) -> &AlertingOptions {
        &self.opts
    }

    fn build_groups(&self) -> Result<Vec<RuleGroup>, String> {
        let mut out = Vec::new();
        let mut stamps = Vec::new();
        for p in &self.opts.rule_files {
            let f = load_rule_file(p)?;
            stamps.push((p.clone(), stamp(p)));
            for g in f.groups {
                out.push(RuleGroup::new(
                    &self.opts.rules_env,
                    &p.display().to_string(),
                    g,
                    self.opts.evaluation_interval_ms,
                )?);
            }
        }
        for ns in self.namespaces.lock().values() {
            let f = RuleFile::parse(&ns.yaml).map_err(|e| e.to_string())?;
            for g in f.groups {
                out.push(RuleGroup::new(
                    &ns.env,
                    &ns.name,
                    g,
                    self.opts.evaluation_interval_ms,
                )?);
            }
        }
        *self.file_stamps.lock() = stamps;
        Ok(out)
    }

    /// Rebuilds the rule groups (after a file or API change), keeping the active alerts of
    /// rules that did not change.
    pub fn rebuild_rules(&self) -> Result<(), String> {
        let mut fresh = self.build_groups()?;
        let mut old = self.groups.lock();
        for g in &mut fresh {
            if let Some(o) = old
                .iter_mut()
                .find(|o| o.file == g.file && o.spec.name == g.spec.name && o.env == g.env)
            {
                g.inherit(o);
                g.last_eval = o.last_eval;
            }
        }
        // Alerts of rules that disappeared resolve.
        let mut orphans = Vec::new();
        for o in old.iter_mut() {
            for r in &mut o.rules {
                if let vigil_alert::rules::Rule::Alerting(ar) = r {
                    orphans.extend(ar.active.drain().map(|(_, a)| a));
                }
            }
        }
        *old = fresh;
        drop(old);
        self.resolve_orphans(orphans);
        Ok(())
    }

    /// Re-reads rule files and the routing file (SIGHUP, `POST /api/telemetry/admin/reload`).
    /// On error the running configuration stays.
    pub fn reload(&self) -> Result<(), String> {
        self.rebuild_rules()?;
        if let Some(p) = &self.opts.notify_path {
            let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
            let cfg = NotifyConfig::parse(&text).map_err(|e| format!("{}: {e}", p.display()))?;
            self.dispatcher
                .lock()
                .reconfigure(&cfg, self.clock.now_ms())?;
            self.refresh_silences();
            *self.notify_cfg.write() = cfg;
        }
        tracing::info!("Alerting configuration reloaded.");
        Ok(())
    }

    /// Asks the loop to reload at its next step.
    pub fn request_reload(&self) {
        self.reload.store(true, Ordering::Relaxed);
        self.poke();
    }

    /// Wakes the loop so it notices the stop flag at once.
    pub fn request_reload_stop(&self) {
        self.poke();
    }

    fn poke(&self) {
        if let Some(tx) = self.wake.lock().as_ref() {
            let _ = tx.send(());
        }
    }

    /// Threshold rules on ingest: called with every stored batch.
    pub fn on_batch(&self, batch: &WriteBatch) {
        if self.thresholds.is_empty() {
            return;
        }
        let env = batch.env().as_str();
        let mut out = Vec::new();
        self.thresholds.with_env(env, |rules| {
            if rules.is_empty() {
                return;
            }
            let mut pairs: Vec<(&str, &str)> = Vec::with_capacity(16);
            for i in 0..batch.series_len() {
                pairs.clear();
                pairs.extend(batch.label_pairs(i));
                rules.observe(&pairs, batch.samples_of(i), &mut out);
            }
        });
        if !out.is_empty() {
            self.queue.lock().extend(out);
            self.poke();
        }
    }

    /// Health events become health alerts.
    pub fn on_health_event(&self, e: &StreamEvent, fleet: &Fleet) {
        let h = &self.opts.health;
        let r = &e.record;
        let now = r.at_ms;
        let mut out = Vec::new();
        let agent_labels = |id: &str| -> BTreeMap<String, String> {
            fleet
                .get(&e.env)
                .and_then(|f| {
                    let f = f.lock();
                    f.index(id).map(|i| f.info[i as usize].labels.clone())
                })
                .unwrap_or_default()
        };
        let mk =
            |name: &str, severity: &str, extra: &[(&str, &str)], base: BTreeMap<String, String>| {
                let mut l: LabelMap = base;
                for (k, v) in extra {
                    l.insert(k.to_string(), v.to_string());
                }
                l.insert("alertname".into(), name.into());
                l.insert("severity".into(), severity.into());
                let mut a = Alert::new(&e.env, l, format!("health:{name}"), 1.0, now);
                a.state = AlertState::Inactive;
                a
            };
        match r.kind.as_str() {
            "state" => {
                let to = r.to_state.as_deref().unwrap_or("");
                let from = r.from_state.as_deref().unwrap_or("");
                let base = agent_labels(&r.agent_id);
                let ids = [("agent", r.agent_id.as_str()), ("zone", e.zone.as_str())];
                if h.agent_failed {
                    let mut a = mk("AgentFailed", &h.agent_failed_severity, &ids, base.clone());
                    if to == "failed" {
                        a.annotations.insert(
                            "summary".into(),
                            format!(
                                "agent {} in zone {} stopped sending heartbeats",
                                r.agent_id, e.zone
                            ),
                        );
                        let t = a.observe_active(now, 1.0, 0);
                        out.push((a, t));
                    } else if from == "failed" {
                        out.push(self.resolve_like(a, now));
                    }
                }
                if h.check_failing {
                    let mut a = mk("AgentCheckFailing", "warning", &ids, base);
                    if to == "degraded" {
                        a.annotations.insert(
                            "summary".into(),
                            format!("agent {} reports failing checks", r.agent_id),
                        );
                        let t = a.observe_active(now, 1.0, 0);
                        out.push((a, t));
                    } else if from == "degraded" {
                        out.push(self.resolve_like(a, now));
                    }
                }
            }
            "partition_suspected" | "partition_ended" if h.partition => {
                let mut a = mk(
                    "ZonePartitionSuspected",
                    "critical",
                    &[("zone", e.zone.as_str())],
                    BTreeMap::new(),
                );
                if r.kind == "partition_suspected" {
                    a.annotations.insert("summary".into(), r.detail.clone());
                    let t = a.observe_active(now, 1.0, 0);
                    out.push((a, t));
                } else {
                    out.push(self.resolve_like(a, now));
                }
            }
            _ => {}
        }
        if !out.is_empty() {
            self.queue.lock().extend(out);
            self.poke();
        }
    }

    /// The resolution of the alert with `a`'s labels, if it is firing.
    fn resolve_like(&self, a: Alert, now: i64) -> (Alert, Transition) {
        let cur = self.lifecycle.lock().get(&a.fingerprint).cloned();
        match cur {
            Some(mut c) if c.state == AlertState::Firing => {
                c.state = AlertState::Inactive;
                c.resolved_at = Some(now);
                (c, Transition::Resolved)
            }
            _ => (a, Transition::None),
        }
    }

    /// Health alerts that no longer match the fleet (a lost event, a restart) are fixed up:
    /// failed agents without an alert get one, alerts of agents no longer failed resolve.
    fn reconcile_health(&self, fleet: &Fleet, now: i64) {
        if !self.opts.health.agent_failed {
            return;
        }
        let mut failed: hashbrown::HashSet<(String, String)> = hashbrown::HashSet::new();
        let mut out = Vec::new();
        for env in fleet.env_names() {
            let Some(f) = fleet.get(&env) else { continue };
            let f = f.lock();
            for i in f.live() {
                if f.det.agent(i).state == vigil_health::State::Failed {
                    let info = &f.info[i as usize];
                    failed.insert((env.clone(), info.id.clone()));
                    let mut l: LabelMap = info.labels.clone();
                    l.insert("agent".into(), info.id.clone());
                    l.insert("zone".into(), info.zone.clone());
                    l.insert("alertname".into(), "AgentFailed".into());
                    l.insert(
                        "severity".into(),
                        self.opts.health.agent_failed_severity.clone(),
                    );
                    let mut a = Alert::new(&env, l, "health:AgentFailed".into(), 1.0, now);
                    let known = self
                        .lifecycle
                        .lock()
                        .get(&a.fingerprint)
                        .is_some_and(|x| x.state == AlertState::Firing);
                    if !known {
                        a.state = AlertState::Inactive;
                        a.annotations.insert(
                            "summary".into(),
                            format!(
                                "agent {} in zone {} stopped sending heartbeats",
                                info.id, info.zone
                            ),
                        );
                        let t = a.observe_active(now, 1.0, 0);
                        out.push((a, t));
                    }
                }
            }
        }
        for a in self.lifecycle.lock().values() {
            if a.source == "health:AgentFailed"
                && a.state == AlertState::Firing
                && !failed.contains(&(
                    a.env.clone(),
                    a.labels.get("agent").cloned().unwrap_or_default(),
                ))
            {
                let mut c = a.clone();
                c.state = AlertState::Inactive;
                c.resolved_at = Some(now);
                out.push((c, Transition::Resolved));
            }
        }
        if !out.is_empty() {
            self.queue.lock().extend(out);
        }
    }

    fn availability_slo(&self, fleet: &Fleet, now: i64) {
        let slo = self.opts.health.availability_slo;
        if slo <= 0.0 {
            return;
        }
        let mut out = Vec::new();
        for env in fleet.env_names() {
            let Ok(av) = fleet.availability(&env, now, self.opts.availability_window_ms) else {
                continue;
            };
            let Some(ratio) = av.total.ratio() else {
                continue;
            };
            let l: LabelMap = [
                ("alertname", "AvailabilityBelowSLO"),
                ("severity", "warning"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
            let mut a = Alert::new(&env, l, "health:AvailabilityBelowSLO".into(), ratio, now);
            let cur = self.lifecycle.lock().get(&a.fingerprint).cloned();
            if ratio < slo {
                let mut c = cur.unwrap_or_else(|| {
                    a.state = AlertState::Inactive;
                    a.clone()
                });
                c.annotations.insert(
                    "summary".into(),
                    format!(
                        "fleet availability {:.4}% over the window is below the SLO of {:.4}%",
                        ratio * 100.0,
                        slo * 100.0
                    ),
                );
                let t = c.observe_active(now, ratio, 0);
                if t != Transition::None {
                    out.push((c, t));
                }
            } else if let Some(mut c) = cur
                && c.state == AlertState::Firing
            {
                c.state = AlertState::Inactive;
                c.resolved_at = Some(now);
                out.push((c, Transition::Resolved));
            }
        }
        if !out.is_empty() {
            self.queue.lock().extend(out);
        }
    }

    fn refresh_silences(&self) {
        let list = self.silences.lock().clone();
        self.dispatcher.lock().set_silences(Silences::new(list));
    }

    // ------------------------------------------------------------------ the loop

    /// Starts the evaluation loop on its own thread and the delivery worker on tokio.
    pub(crate) fn spawn(
        self: &Arc<Self>,
        state: crate::http::state::AppState,
        stop: Arc<AtomicBool>,
    ) -> (
        std::thread::JoinHandle<()>,
        tokio::task::JoinHandle<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let fleet = state.0.fleet.clone();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        *self.wake.lock() = Some(tx);
        // Health events.
        let events = {
            let me = self.clone();
            let fleet = fleet.clone();
            let mut rx = fleet.subscribe();
            tokio::spawn(async move {
                loop {
                    match rx.recv().await {
                        Ok(e) => me.on_health_event(&e, &fleet),
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            tracing::warn!(
                                missed = n,
                                "Alerting fell behind the health stream; reconciling with the fleet."
                            );
                            me.reconcile_health(&fleet, me.clock.now_ms());
                            me.poke();
                        }
                        Err(_) => break,
                    }
                }
            })
        };
        let me = self.clone();
        let st = stop.clone();
        let thread = std::thread::Builder::new()
            .name("vigil-alerting".into())
            .spawn(move || me.run_loop(rx, state, st))
            .unwrap_or_else(|e| panic!("cannot start the alerting thread: {e}"));
        let deliver = tokio::spawn(deliver_loop(self.clone(), stop));
        (thread, events, deliver)
    }

    fn run_loop(
        &self,
        rx: std::sync::mpsc::Receiver<()>,
        state: crate::http::state::AppState,
        stop: Arc<AtomicBool>,
    ) {
        let fleet = state.0.fleet.clone();
        let engine = state.0.engine.clone();
        let mut next_tick = 0i64;
        let mut next_reconcile = self.clock.now_ms() + 10_000;
        // The availability SLO is checked at the evaluation interval (it reads the state history).
        let mut next_slo = self.clock.now_ms() + self.opts.evaluation_interval_ms;
        let mut next_series = 0i64;
        let mut next_file_check = 0i64;
        while !stop.load(Ordering::Relaxed) {
            let now = self.clock.now_ms();
            if self.reload.swap(false, Ordering::Relaxed)
                && let Err(e) = self.reload()
            {
                tracing::error!(error = %e, "Alerting reload failed; the previous configuration stays.");
            }
            if now >= next_file_check {
                next_file_check = now + 5_000;
                let changed = self.file_stamps.lock().iter().any(|(p, s)| stamp(p) != *s);
                if changed {
                    tracing::info!("A rule file changed; reloading rules.");
                    if let Err(e) = self.rebuild_rules() {
                        tracing::error!(error = %e, "Rule reload failed; the previous rules stay.");
                        // Do not retry every 5 s with the same broken file.
                        let mut st = self.file_stamps.lock();
                        for (p, s) in st.iter_mut() {
                            *s = stamp(p);
                        }
                    }
                }
            }
            if now >= next_tick {
                next_tick = now + 1_000;
                let mut out = Vec::new();
                self.thresholds.tick(now, &mut out);
                if !out.is_empty() {
                    self.queue.lock().extend(out);
                }
            }
            if now >= next_reconcile {
                next_reconcile = now + 10_000;
                self.reconcile_health(&fleet, now);
            }
            if now >= next_slo {
                next_slo = now + self.opts.evaluation_interval_ms;
                self.availability_slo(&fleet, now);
            }
            let db_now = state.0.db.get().cloned();
            let mut removed = Vec::new();
            if let Some(db) = &db_now {
                removed = self.eval_due_groups(db, &engine, now);
            }
            self.step(now, removed);
            if let Some(db) = &db_now
                && now >= next_series
            {
                next_series = now + self.opts.evaluation_interval_ms;
                self.write_alerts_series(db, now);
            }
            let next_due = self.dispatcher.lock().next_due().unwrap_or(i64::MAX);
            let next_group = self
                .groups
                .lock()
                .iter()
                .map(|g| g.last_eval.map_or(now, |t| t + g.interval_ms))
                .min()
                .unwrap_or(i64::MAX);
            let wake_at = next_due.min(next_group).min(next_tick).min(now + 1_000);
            let wait = (wake_at - self.clock.now_ms()).clamp(0, 1_000);
            match rx.recv_timeout(Duration::from_millis(wait as u64)) {
                Ok(()) => while rx.try_recv().is_ok() {},
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        // Final flush of queued transitions.
        self.step(self.clock.now_ms(), Vec::new());
    }

    fn eval_due_groups(&self, db: &Arc<Db>, engine: &vigil_promql::Engine, now: i64) -> Vec<Alert> {
        let mut groups = self.groups.lock();
        let mut removed = Vec::new();
        for g in groups.iter_mut() {
            // Aligned like Prometheus: every group at multiples of its interval.
            let due = match g.last_eval {
                None => true,
                Some(t) => now >= t + g.interval_ms,
            };
            if !due {
                continue;
            }
            let ts = now - now.rem_euclid(g.interval_ms.max(1));
            let ts = if g.last_eval.is_some_and(|t| t >= ts) {
                now
            } else {
                ts
            };
            let env = g.env.clone();
            let storage = vigil_promql::storage::TsdbStorage::new(db, &env);
            let mut sink = StoreSink { db, alerting: self };
            let EvalOutput {
                changed,
                removed: gone,
                ..
            } = g.eval(engine, &storage, &mut sink, ts);
            self.stats.evaluations.fetch_add(1, Ordering::Relaxed);
            let failed = g
                .rules
                .iter()
                .filter(|r| match r {
                    vigil_alert::rules::Rule::Alerting(a) => a.status.last_error.is_some(),
                    vigil_alert::rules::Rule::Recording(r) => r.status.last_error.is_some(),
                })
                .count();
            self.stats
                .evaluation_failures
                .fetch_add(failed as u64, Ordering::Relaxed);
            self.queue.lock().extend(changed);
            removed.extend(gone);
        }
        removed
    }

    /// Applies queued transitions, flushes due groups, persists everything in one transaction.
    fn step(&self, now: i64, removed: Vec<Alert>) {
        let events = std::mem::take(&mut *self.queue.lock());
        // A write that failed last time (disk full, locked) goes first, so nothing is lost.
        let mut tx = self.unsaved.lock().take().unwrap_or_default();
        let notes;
        {
            let mut d = self.dispatcher.lock();
            let mut lc = self.lifecycle.lock();
            for (a, t) in events {
                if t == Transition::None && a.state != AlertState::Firing {
                    continue;
                }
                let forget = (a.state == AlertState::Pending && t == Transition::Resolved)
                    || (a.state == AlertState::Inactive && a.fired_at.is_none());
                match t {
                    Transition::Pending => tx.history.push(history(&a, "pending", now, None)),
                    Transition::Fired => {
                        tx.history.push(history(&a, "firing", now, None));
                        *self
                            .stats
                            .fired
                            .lock()
                            .entry(a.labels.get("alertname").cloned().unwrap_or_default())
                            .or_default() += 1;
                        self.stats
                            .per_rule
                            .lock()
                            .entry(a.labels.get("alertname").cloned().unwrap_or_default())
                            .or_default()
                            .changes += 1;
                    }
                    Transition::Resolved if a.fired_at.is_some() => {
                        tx.history.push(history(&a, "resolved", now, None));
                        let mut pr = self.stats.per_rule.lock();
                        let t = pr
                            .entry(a.labels.get("alertname").cloned().unwrap_or_default())
                            .or_default();
                        t.resolved += 1;
                        t.changes += 1;
                        t.resolve_seconds +=
                            (now - a.fired_at.unwrap_or(now)).max(0) as f64 / 1000.0;
                    }
                    _ => {}
                }
                if forget {
                    if lc.remove(&a.fingerprint).is_some() {
                        tx.docs.push(DocOp::Delete {
                            kind: "alert",
                            key: fp_hex(a.fingerprint),
                        });
                    }
                    continue;
                }
                tx.docs.push(DocOp::Put {
                    kind: "alert",
                    key: fp_hex(a.fingerprint),
                    env: a.env.clone(),
                    body: serde_json::to_string(&a).unwrap_or_default(),
                });
                d.upsert(&a, now);
                lc.insert(a.fingerprint, a);
            }
            for a in removed {
                if lc.remove(&a.fingerprint).is_some() {
                    tx.docs.push(DocOp::Delete {
                        kind: "alert",
                        key: fp_hex(a.fingerprint),
                    });
                }
            }
            // Resolved alerts are kept 15 minutes, then forgotten.
            lc.retain(|fp, a| {
                let keep = !(a.state == AlertState::Inactive
                    && a.resolved_at
                        .is_some_and(|r| now - r > vigil_alert::rules::RESOLVED_RETENTION_MS));
                if !keep {
                    tx.docs.push(DocOp::Delete {
                        kind: "alert",
                        key: fp_hex(*fp),
                    });
                }
                keep
            });
            drop(lc);
            notes = d.flush_due(now);
            for (k, g) in d.take_dirty_groups() {
                tx.docs.push(match g {
                    Some(g) => DocOp::Put {
                        kind: "group",
                        key: k,
                        env: "*".into(),
                        body: serde_json::to_string(&g).unwrap_or_default(),
                    },
                    None => DocOp::Delete {
                        kind: "group",
                        key: k,
                    },
                });
            }
            for (fp, t) in d.take_dirty_alerts() {
                tx.docs.push(match t {
                    Some(t) => DocOp::Put {
                        kind: "tracked",
                        key: fp_hex(fp),
                        env: t.alert.env.clone(),
                        body: serde_json::to_string(&t).unwrap_or_default(),
                    },
                    None => DocOp::Delete {
                        kind: "tracked",
                        key: fp_hex(fp),
                    },
                });
            }
        }
        if !notes.is_empty() {
            // Receivers' settings, read only when there is something to send.
            let cfg = self.notify_cfg.read();
            for n in &notes {
                self.outbox_rows(n, &cfg, &mut tx.outbox);
            }
        }
        let queued = tx.outbox.len();
        if let Err(e) = self.meta.apply_alert_tx(&tx, now) {
            tracing::error!(error = %e, "Could not save alerting state and notifications; retrying with the next step.");
            *self.unsaved.lock() = Some(tx);
            return;
        }
        if queued > 0 {
            self.stats
                .queued
                .fetch_add(queued as u64, Ordering::Relaxed);
            self.deliver_wake.notify_one();
        }
    }

    fn outbox_rows(&self, n: &Notification, cfg: &NotifyConfig, out: &mut Vec<OutboxNew>) {
        let Some(r) = cfg.receivers.iter().find(|r| r.name == n.receiver) else {
            return;
        };
        let envs: std::collections::BTreeSet<&str> =
            n.alerts.iter().map(|a| a.alert.env.as_str()).collect();
        let env = if envs.len() == 1 {
            envs.into_iter().next().unwrap_or("*").to_string()
        } else {
            "*".into()
        };
        let ext = &self.opts.external_url;
        let only_firing = |n: &Notification| -> Option<Notification> {
            let mut c = n.clone();
            c.alerts.retain(|a| a.status == "firing");
            (!c.alerts.is_empty()).then_some(c)
        };
        let title = payload::default_title(n);
        let timeout_ms = self.opts.delivery_timeout.as_millis() as u64;
        for w in &r.webhook_configs {
            let Some(nn) = (if w.send_resolved {
                Some(n.clone())
            } else {
                only_firing(n)
            }) else {
                continue;
            };
            let body =
                payload::webhook(&nn, ext, w.max_alerts, w.format.as_deref() == Some("vigil"));
            out.push(OutboxNew {
                env: env.clone(),
                receiver: n.receiver.clone(),
                channel: "webhook".into(),
                target: w.url.clone(),
                request: json!({"url": w.url, "headers": w.headers, "timeout_ms": w.timeout.map(|t| t.ms() as u64).unwrap_or(timeout_ms), "body": body}).to_string(),
                summary: title.clone(),
            });
        }
        for s in &r.slack_configs {
            let Some(nn) = (if s.send_resolved {
                Some(n.clone())
            } else {
                only_firing(n)
            }) else {
                continue;
            };
            let url = s
                .api_url
                .clone()
                .or_else(|| cfg.global.slack_api_url.clone())
                .unwrap_or_default();
            out.push(OutboxNew {
                env: env.clone(),
                receiver: n.receiver.clone(),
                channel: "slack".into(),
                target: url.clone(),
                request: json!({"url": url, "timeout_ms": timeout_ms, "body": payload::slack(&nn, s, ext)}).to_string(),
                summary: title.clone(),
            });
        }
        for e in &r.email_configs {
            let Some(nn) = (if e.send_resolved {
                Some(n.clone())
            } else {
                only_firing(n)
            }) else {
                continue;
            };
            let (subject, text, html) = payload::email(&nn, e, ext);
            let g = &cfg.global;
            out.push(OutboxNew {
                env: env.clone(),
                receiver: n.receiver.clone(),
                channel: "email".into(),
                target: e.to.clone(),
                request: json!({
                    "smarthost": e.smarthost.clone().or_else(|| g.smtp_smarthost.clone()),
                    "from": e.from.clone().or_else(|| g.smtp_from.clone()),
                    "to": e.to,
                    "username": e.auth_username.clone().or_else(|| g.smtp_auth_username.clone()),
                    "password": e.auth_password.clone().or_else(|| g.smtp_auth_password.clone()),
                    "require_tls": e.require_tls.or(g.smtp_require_tls).unwrap_or(true),
                    "implicit_tls": e.implicit_tls,
                    "ca_file": e.tls_config.as_ref().and_then(|t| t.ca_file.clone()),
                    "server_name": e.tls_config.as_ref().and_then(|t| t.server_name.clone()),
                    "insecure_skip_verify": e.tls_config.as_ref().is_some_and(|t| t.insecure_skip_verify),
                    "subject": subject,
                    "text": text,
                    "html": html,
                    "timeout_ms": timeout_ms,
                })
                .to_string(),
                summary: title.clone(),
            });
        }
        for a in &r.alertmanager_configs {
            let body = payload::alertmanager_v2(n, ext, a.send_resolved);
            if body.as_array().is_some_and(|x| x.is_empty()) {
                continue;
            }
            let url = format!("{}/api/v2/alerts", a.url.trim_end_matches('/'));
            out.push(OutboxNew {
                env: env.clone(),
                receiver: n.receiver.clone(),
                channel: "alertmanager".into(),
                target: url.clone(),
                request: json!({"url": url, "timeout_ms": timeout_ms, "body": body}).to_string(),
                summary: title.clone(),
            });
        }
    }

    fn write_alerts_series(&self, db: &Db, now: i64) {
        let lc = self.lifecycle.lock();
        let mut by_env: BTreeMap<String, Vec<(LabelMap, f64)>> = BTreeMap::new();
        let mut current: HashMap<u64, (String, LabelMap)> = HashMap::new();
        for a in lc.values() {
            for (l, v) in vigil_alert::alerts_series(std::iter::once(a)) {
                current.insert(vigil_alert::fingerprint(&l), (a.env.clone(), l.clone()));
                by_env.entry(a.env.clone()).or_default().push((l, v));
            }
        }
        drop(lc);
        let mut last = self.last_series.lock();
        for (fp, (env, l)) in last.iter() {
            if !current.contains_key(fp) {
                by_env
                    .entry(env.clone())
                    .or_default()
                    .push((l.clone(), vigil_model::stale_marker()));
            }
        }
        *last = current;
        drop(last);
        for (env, samples) in by_env {
            if let Err(e) = write_samples(db, &env, now, &samples) {
                tracing::warn!(error = %e, env, "Could not write the ALERTS series.");
            }
        }
    }

    // ------------------------------------------------------------------ API operations

    /// Every pending/firing/recently-resolved alert of `env` (all when `None`).
    pub fn alerts(&self, env: Option<&str>) -> Vec<Alert> {
        let mut v: Vec<Alert> = self
            .lifecycle
            .lock()
            .values()
            .filter(|a| env.is_none_or(|e| a.env == e))
            .cloned()
            .collect();
        v.sort_by(|a, b| a.labels.cmp(&b.labels));
        v
    }

    /// The dispatcher's view of an alert: acknowledgement and why it is muted.
    pub fn dispatch_view(
        &self,
        a: &Alert,
    ) -> (
        Option<vigil_alert::dispatch::Ack>,
        vigil_alert::dispatch::Mute,
    ) {
        let d = self.dispatcher.lock();
        let ack = d.get(a.fingerprint).and_then(|t| t.ack.clone());
        (ack, d.mute_of(a, self.clock.now_ms()))
    }

    /// [`Alerting::dispatch_view`] for many alerts, finding inhibitors once.
    pub fn dispatch_views(
        &self,
        alerts: &[Alert],
    ) -> Vec<(
        Option<vigil_alert::dispatch::Ack>,
        vigil_alert::dispatch::Mute,
    )> {
        let d = self.dispatcher.lock();
        let refs: Vec<&Alert> = alerts.iter().collect();
        let mutes = d.mutes(&refs, self.clock.now_ms());
        alerts
            .iter()
            .zip(mutes)
            .map(|(a, m)| (d.get(a.fingerprint).and_then(|t| t.ack.clone()), m))
            .collect()
    }

    /// Acknowledges a firing alert of `env`.
    pub fn ack(&self, env: &str, fp: u64, by: &str) -> Result<Alert, String> {
        let now = self.clock.now_ms();
        let a = self
            .lifecycle
            .lock()
            .get(&fp)
            .filter(|a| a.env == env)
            .cloned()
            .ok_or_else(|| format!("no alert {} in environment {env}", fp_hex(fp)))?;
        if a.state != AlertState::Firing {
            return Err(format!(
                "alert {} is {}, only firing alerts can be acknowledged",
                fp_hex(fp),
                a.state.as_str()
            ));
        }
        let mut d = self.dispatcher.lock();
        if !d.ack(fp, by, now) {
            // Firing but not yet seen by the dispatcher (queued): take it now.
            d.upsert(&a, now);
            d.ack(fp, by, now);
        }
        let mut tx = AlertTx::default();
        for (fp, t) in d.take_dirty_alerts() {
            if let Some(t) = t {
                tx.docs.push(DocOp::Put {
                    kind: "tracked",
                    key: fp_hex(fp),
                    env: t.alert.env.clone(),
                    body: serde_json::to_string(&t).unwrap_or_default(),
                });
            }
        }
        drop(d);
        tx.history
            .push(history(&a, "acknowledged", now, Some(by.to_string())));
        {
            let mut pr = self.stats.per_rule.lock();
            let t = pr
                .entry(a.labels.get("alertname").cloned().unwrap_or_default())
                .or_default();
            t.acks += 1;
            t.ack_seconds += (now - a.fired_at.unwrap_or(now)).max(0) as f64 / 1000.0;
        }
        self.meta
            .apply_alert_tx(&tx, now)
            .map_err(|e| e.to_string())?;
        Ok(a)
    }

    /// Silences of `env` (all when `None`).
    pub fn silences(&self, env: Option<&str>) -> Vec<Silence> {
        self.silences
            .lock()
            .iter()
            .filter(|s| env.is_none_or(|e| s.env == e))
            .cloned()
            .collect()
    }

    /// Creates or replaces a silence (validated by the caller).
    pub fn put_silence(&self, s: Silence) -> Result<(), String> {
        let now = self.clock.now_ms();
        self.meta
            .apply_alert_tx(
                &AlertTx {
                    docs: vec![DocOp::Put {
                        kind: "silence",
                        key: s.id.clone(),
                        env: s.env.clone(),
                        body: serde_json::to_string(&s).unwrap_or_default(),
                    }],
                    ..Default::default()
                },
                now,
            )
            .map_err(|e| e.to_string())?;
        let mut l = self.silences.lock();
        l.retain(|x| x.id != s.id);
        l.push(s);
        // Expired silences older than 5 days are forgotten (Alertmanager's retention).
        l.retain(|x| now - x.ends_at < 5 * 86_400_000);
        drop(l);
        self.refresh_silences();
        self.poke();
        Ok(())
    }

    /// Expires a silence now. `false` if unknown in `env`.
    pub fn expire_silence(&self, env: &str, id: &str) -> Result<bool, String> {
        let now = self.clock.now_ms();
        let Some(mut s) = self
            .silences
            .lock()
            .iter()
            .find(|s| s.id == id && s.env == env)
            .cloned()
        else {
            return Ok(false);
        };
        if s.ends_at > now {
            s.ends_at = now.max(s.starts_at);
            if s.ends_at <= s.starts_at {
                s.starts_at = now - 1;
                s.ends_at = now;
            }
        }
        s.updated_at = now;
        self.put_silence(s)?;
        Ok(true)
    }

    /// Threshold rules of `env`.
    pub fn threshold_rules(&self, env: &str) -> Vec<ThresholdRule> {
        let mut v: Vec<ThresholdRule> = self
            .thresholds
            .rules()
            .into_iter()
            .filter(|c| c.env == env)
            .map(|c| c.rule.clone())
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Creates or replaces a threshold rule (validated), persisted before it takes effect.
    pub fn put_threshold(&self, env: &str, rule: ThresholdRule) -> Result<(), String> {
        let errs = rule.validate();
        if !errs.is_empty() {
            return Err(errs.join("; "));
        }
        let mut all: Vec<(String, ThresholdRule)> = self
            .thresholds
            .rules()
            .into_iter()
            .filter(|c| !(c.env == env && c.rule.id == rule.id))
            .map(|c| (c.env.clone(), c.rule.clone()))
            .collect();
        all.push((env.to_string(), rule.clone()));
        self.meta
            .apply_alert_tx(
                &AlertTx {
                    docs: vec![DocOp::Put {
                        kind: "threshold",
                        key: format!("{env}/{}", rule.id),
                        env: env.into(),
                        body: serde_json::to_string(&rule).unwrap_or_default(),
                    }],
                    ..Default::default()
                },
                self.clock.now_ms(),
            )
            .map_err(|e| e.to_string())?;
        self.thresholds.load(all)
    }

    /// Replaces every threshold rule of `env` at once (validated), persisted in one
    /// transaction; alerts of rules that disappear resolve.
    pub fn replace_thresholds(&self, env: &str, rules: Vec<ThresholdRule>) -> Result<(), String> {
        let mut ids = std::collections::HashSet::new();
        for r in &rules {
            let errs = r.validate();
            if !errs.is_empty() {
                return Err(format!("threshold rule {:?}: {}", r.id, errs.join("; ")));
            }
            if !ids.insert(r.id.as_str()) {
                return Err(format!("threshold rule id {:?} appears twice", r.id));
            }
        }
        let current = self.thresholds.rules();
        let gone: Vec<_> = current
            .iter()
            .filter(|c| c.env == env && !ids.contains(c.rule.id.as_str()))
            .cloned()
            .collect();
        let mut all: Vec<(String, ThresholdRule)> = current
            .iter()
            .filter(|c| c.env != env)
            .map(|c| (c.env.clone(), c.rule.clone()))
            .collect();
        let mut docs: Vec<DocOp> = gone
            .iter()
            .map(|c| DocOp::Delete {
                kind: "threshold",
                key: format!("{env}/{}", c.rule.id),
            })
            .collect();
        for r in rules {
            docs.push(DocOp::Put {
                kind: "threshold",
                key: format!("{env}/{}", r.id),
                env: env.into(),
                body: serde_json::to_string(&r).unwrap_or_default(),
            });
            all.push((env.to_string(), r));
        }
        self.meta
            .apply_alert_tx(
                &AlertTx {
                    docs,
                    ..Default::default()
                },
                self.clock.now_ms(),
            )
            .map_err(|e| e.to_string())?;
        self.thresholds.load(all)?;
        self.resolve_orphans(gone.iter().flat_map(|c| c.alerts()));
        Ok(())
    }

    /// Queues the resolution of alerts whose rule is gone (pending ones are forgotten).
    fn resolve_orphans(&self, alerts: impl IntoIterator<Item = Alert>) {
        let now = self.clock.now_ms();
        let mut q = self.queue.lock();
        for mut a in alerts {
            match a.state {
                AlertState::Firing => {
                    a.state = AlertState::Inactive;
                    a.resolved_at = Some(now);
                    q.push((a, Transition::Resolved));
                }
                AlertState::Pending => q.push((a, Transition::Resolved)),
                AlertState::Inactive => {}
            }
        }
        drop(q);
        self.poke();
    }

    /// Deletes a threshold rule; its alerts resolve. `false` if unknown.
    pub fn delete_threshold(&self, env: &str, id: &str) -> Result<bool, String> {
        let rules = self.thresholds.rules();
        let Some(gone) = rules
            .iter()
            .find(|c| c.env == env && c.rule.id == id)
            .cloned()
        else {
            return Ok(false);
        };
        let all: Vec<(String, ThresholdRule)> = rules
            .iter()
            .filter(|c| !(c.env == env && c.rule.id == id))
            .map(|c| (c.env.clone(), c.rule.clone()))
            .collect();
        self.meta
            .apply_alert_tx(
                &AlertTx {
                    docs: vec![DocOp::Delete {
                        kind: "threshold",
                        key: format!("{env}/{id}"),
                    }],
                    ..Default::default()
                },
                self.clock.now_ms(),
            )
            .map_err(|e| e.to_string())?;
        self.thresholds.load(all)?;
        self.resolve_orphans(gone.alerts());
        Ok(true)
    }

    /// Rule namespaces of `env`.
    pub fn namespaces(&self, env: &str) -> Vec<Namespace> {
        self.namespaces
            .lock()
            .values()
            .filter(|n| n.env == env)
            .cloned()
            .collect()
    }

    /// Creates or replaces a rule namespace (YAML in Prometheus' rule-file format).
    pub fn put_namespace(&self, env: &str, name: &str, yaml: &str) -> Result<(), Vec<String>> {
        RuleFile::parse(yaml).map_err(|e| e.0)?;
        let ns = Namespace {
            env: env.into(),
            name: name.into(),
            yaml: yaml.into(),
        };
        let prev = self
            .namespaces
            .lock()
            .insert((env.into(), name.into()), ns.clone());
        if let Err(e) = self.rebuild_rules() {
            let mut m = self.namespaces.lock();
            match prev {
                Some(p) => m.insert((env.into(), name.into()), p),
                None => m.remove(&(env.to_string(), name.to_string())),
            };
            return Err(vec![e]);
        }
        self.meta
            .apply_alert_tx(
                &AlertTx {
                    docs: vec![DocOp::Put {
                        kind: "rules",
                        key: format!("{env}/{name}"),
                        env: env.into(),
                        body: serde_json::to_string(&ns).unwrap_or_default(),
                    }],
                    ..Default::default()
                },
                self.clock.now_ms(),
            )
            .map_err(|e| vec![e.to_string()])
    }

    /// Deletes a rule namespace. `false` if unknown.
    pub fn delete_namespace(&self, env: &str, name: &str) -> Result<bool, String> {
        if self
            .namespaces
            .lock()
            .remove(&(env.to_string(), name.to_string()))
            .is_none()
        {
            return Ok(false);
        }
        self.meta
            .apply_alert_tx(
                &AlertTx {
                    docs: vec![DocOp::Delete {
                        kind: "rules",
                        key: format!("{env}/{name}"),
                    }],
                    ..Default::default()
                },
                self.clock.now_ms(),
            )
            .map_err(|e| e.to_string())?;
        self.rebuild_rules()?;
        Ok(true)
    }

    /// Runs `f` over the rule groups of `env`.
    pub fn with_groups<R>(&self, f: impl FnOnce(&[&RuleGroup]) -> R, env: &str) -> R {
        let g = self.groups.lock();
        let v: Vec<&RuleGroup> = g.iter().filter(|g| g.env == env).collect();
        f(&v)
    }

    /// The routing configuration.
    pub fn notify_config(&self) -> NotifyConfig {
        self.notify_cfg.read().clone()
    }

    /// Aggregation groups (for the API).
    pub fn groups_view(&self) -> Vec<vigil_alert::dispatch::Group> {
        self.dispatcher.lock().groups().cloned().collect()
    }

    /// The metadata store.
    pub fn meta(&self) -> &Arc<Meta> {
        &self.meta
    }

    /// Current time on the alerting clock.
    pub fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    /// `/metrics` lines.
    pub fn render_metrics(&self, o: &mut String) {
        use std::fmt::Write as _;
        let mut by_state: BTreeMap<&str, u64> = BTreeMap::new();
        for a in self.lifecycle.lock().values() {
            *by_state.entry(a.state.as_str()).or_default() += 1;
        }
        o.push_str("# HELP vigil_alerts Alerts by state.\n# TYPE vigil_alerts gauge\n");
        for s in ["pending", "firing", "inactive"] {
            let _ = writeln!(
                o,
                "vigil_alerts{{state=\"{s}\"}} {}",
                by_state.get(s).copied().unwrap_or(0)
            );
        }
        o.push_str("# HELP vigil_alerts_fired_total Alerts that started firing, by alertname.\n# TYPE vigil_alerts_fired_total counter\n");
        for (n, c) in self.stats.fired.lock().iter() {
            let _ = writeln!(
                o,
                "vigil_alerts_fired_total{{alertname=\"{}\"}} {c}",
                n.replace('\\', "\\\\").replace('"', "\\\"")
            );
        }
        let esc = |n: &str| n.replace('\\', "\\\\").replace('"', "\\\"");
        let pr = self.stats.per_rule.lock().clone();
        for (name, help, f) in [
            (
                "vigil_alert_resolutions_total",
                "Firing alerts that resolved, by alertname.",
                (|t: &RuleTally| t.resolved as f64) as fn(&RuleTally) -> f64,
            ),
            (
                "vigil_alert_resolve_seconds_total",
                "Sum of firing-to-resolved times, by alertname (MTTR = this / vigil_alert_resolutions_total).",
                |t| t.resolve_seconds,
            ),
            (
                "vigil_alert_acknowledgements_total",
                "Acknowledged alerts, by alertname.",
                |t| t.acks as f64,
            ),
            (
                "vigil_alert_acknowledge_seconds_total",
                "Sum of firing-to-acknowledged times, by alertname (MTTA = this / vigil_alert_acknowledgements_total).",
                |t| t.ack_seconds,
            ),
            (
                "vigil_alert_state_changes_total",
                "Firing and resolved transitions, by alertname (flapping: its rate).",
                |t| t.changes as f64,
            ),
        ] {
            let _ = write!(o, "# HELP {name} {help}\n# TYPE {name} counter\n");
            for (n, t) in &pr {
                let _ = writeln!(o, "{name}{{alertname=\"{}\"}} {}", esc(n), f(t));
            }
        }
        o.push_str("# HELP vigil_notifications_total Notification attempts by receiver, channel and outcome.\n# TYPE vigil_notifications_total counter\n");
        for ((r, c, out), n) in self.stats.deliveries.lock().iter() {
            let _ = writeln!(
                o,
                "vigil_notifications_total{{receiver=\"{r}\",channel=\"{c}\",outcome=\"{out}\"}} {n}"
            );
        }
        let _ = write!(
            o,
            "# HELP vigil_notifications_queued_total Notifications written to the outbox.\n# TYPE vigil_notifications_queued_total counter\nvigil_notifications_queued_total {}\n",
            self.stats.queued.load(Ordering::Relaxed)
        );
        let _ = write!(
            o,
            "# HELP vigil_rule_group_evaluations_total Rule group evaluations.\n# TYPE vigil_rule_group_evaluations_total counter\nvigil_rule_group_evaluations_total {}\n",
            self.stats.evaluations.load(Ordering::Relaxed)
        );
        let _ = write!(
            o,
            "# HELP vigil_rule_evaluation_failures_total Rule evaluations that failed.\n# TYPE vigil_rule_evaluation_failures_total counter\nvigil_rule_evaluation_failures_total {}\n",
            self.stats.evaluation_failures.load(Ordering::Relaxed)
        );
        let _ = write!(
            o,
            "# HELP vigil_threshold_rules Threshold rules loaded.\n# TYPE vigil_threshold_rules gauge\nvigil_threshold_rules {}\n",
            self.thresholds.len()
        );
    }
}

struct StoreSink<'a> {
    db: &'a Db,
    alerting: &'a Alerting,
}

impl RecordSink for StoreSink<'_> {
    fn write(&mut self, env: &str, ts: i64, samples: &[(LabelMap, f64)]) -> Result<(), String> {
        let b = write_samples(self.db, env, ts, samples)?;
        // Recorded series are samples like any other: threshold rules see them.
        if let Some(b) = b {
            self.alerting.on_batch(&b);
        }
        Ok(())
    }
}

fn write_samples(
    db: &Db,
    env: &str,
    ts: i64,
    samples: &[(LabelMap, f64)],
) -> Result<Option<WriteBatch>, String> {
    if samples.is_empty() {
        return Ok(None);
    }
    let env = EnvId::new(env).map_err(|e| e.to_string())?;
    let mut b = WriteBatch::new(env);
    let limits = vigil_model::LabelLimits::default();
    for (l, v) in samples {
        for (k, val) in l {
            b.push_label(k, val);
        }
        b.push_sample(ts, *v);
        b.finish_series(&limits).map_err(|e| e.to_string())?;
    }
    db.write(&b).map_err(|e| e.to_string())?;
    Ok(Some(b))
}

// ---------------------------------------------------------------------- delivery

fn jitter(id: i64, attempt: i64) -> f64 {
    // Deterministic per (notification, attempt), spread over ±20%.
    let mut h = (id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (attempt as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    h ^= h >> 31;
    0.8 + 0.4 * ((h % 10_000) as f64 / 10_000.0)
}

/// Delay before attempt `attempts + 1` (ms).
pub fn backoff_ms(base: Duration, max: Duration, id: i64, attempts: i64) -> i64 {
    let exp = (base.as_millis() as f64) * 2f64.powi((attempts - 1).clamp(0, 30) as i32);
    (exp.min(max.as_millis() as f64) * jitter(id, attempts)) as i64
}

enum SendError {
    Retry(String),
    Permanent(String),
}

async fn deliver_loop(al: Arc<Alerting>, stop: Arc<AtomicBool>) {
    let client = match reqwest::Client::builder().build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "Cannot build the notification HTTP client; notifications stay queued.");
            return;
        }
    };
    while !stop.load(Ordering::Relaxed) {
        let now = al.clock.now_ms();
        let meta = al.meta.clone();
        let due = tokio::task::spawn_blocking(move || meta.outbox_due(now, 64)).await;
        let due = match due {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "Cannot read the outbox.");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(_) => break,
        };
        let full = due.len() == 64;
        use futures_util::StreamExt;
        let results: Vec<(OutboxRow, Result<(), SendError>)> = futures_util::stream::iter(due)
            .map(|row| {
                let client = client.clone();
                async move {
                    let r = send(&client, &row).await;
                    (row, r)
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        for (row, r) in results {
            let done = al.clock.now_ms();
            let attempts = row.attempts + 1;
            let (state, next, err, delivered, outcome) = match r {
                // The log keeps the last failure of a notification delivered on a retry.
                Ok(()) => (
                    "delivered",
                    0,
                    row.last_error.clone(),
                    Some(done),
                    "delivered",
                ),
                Err(SendError::Permanent(e)) => ("dead", 0, Some(e), None, "dead"),
                Err(SendError::Retry(e))
                    if attempts >= i64::from(al.opts.delivery_max_attempts) =>
                {
                    ("dead", 0, Some(e), None, "dead")
                }
                Err(SendError::Retry(e)) => (
                    "pending",
                    done + backoff_ms(
                        al.opts.delivery_backoff,
                        al.opts.delivery_backoff_max,
                        row.id,
                        attempts,
                    ),
                    Some(e),
                    None,
                    "retry",
                ),
            };
            if let Some(e) = &err {
                tracing::warn!(id = row.id, receiver = %row.receiver, channel = %row.channel, attempts, state, error = %e, "Notification not delivered.");
            }
            *al.stats
                .deliveries
                .lock()
                .entry((row.receiver.clone(), row.channel.clone(), outcome))
                .or_default() += 1;
            let meta = al.meta.clone();
            let id = row.id;
            let res = tokio::task::spawn_blocking(move || {
                meta.outbox_update(id, state, attempts, next, err.as_deref(), delivered)
            })
            .await;
            if let Ok(Err(e)) = res {
                tracing::error!(error = %e, "Cannot update the outbox.");
            }
        }
        if full {
            continue;
        }
        let meta = al.meta.clone();
        let next = tokio::task::spawn_blocking(move || meta.outbox_next_due())
            .await
            .ok()
            .and_then(|r| r.ok())
            .flatten();
        let wait = next.map_or(1_000, |t| (t - al.clock.now_ms()).clamp(0, 1_000));
        tokio::select! {
            _ = al.deliver_wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(wait as u64)) => {}
        }
    }
}

async fn send(client: &reqwest::Client, row: &OutboxRow) -> Result<(), SendError> {
    let req: serde_json::Value = serde_json::from_str(&row.request)
        .map_err(|e| SendError::Permanent(format!("stored request is not JSON: {e}")))?;
    let timeout = Duration::from_millis(req["timeout_ms"].as_u64().unwrap_or(10_000));
    match row.channel.as_str() {
        "webhook" | "slack" | "alertmanager" => {
            let url = req["url"].as_str().unwrap_or_default();
            let mut rb = client
                .post(url)
                .timeout(timeout)
                .header("content-type", "application/json")
                .header("user-agent", concat!("Vigil/", env!("CARGO_PKG_VERSION")));
            if let Some(h) = req["headers"].as_object() {
                for (k, v) in h {
                    if let Some(v) = v.as_str() {
                        rb = rb.header(k.as_str(), v);
                    }
                }
            }
            let resp = rb
                .body(req["body"].to_string())
                .send()
                .await
                .map_err(|e| SendError::Retry(format!("{url}: {e}")))?;
            let status = resp.status();
            if status.is_success() {
                Ok(())
            } else {
                let text = resp.text().await.unwrap_or_default();
                let msg = format!(
                    "{url}: HTTP {status}: {}",
                    text.chars().take(200).collect::<String>()
                );
                if status.is_client_error() && status.as_u16() != 408 && status.as_u16() != 429 {
                    Err(SendError::Permanent(msg))
                } else {
                    Err(SendError::Retry(msg))
                }
            }
        }
        "email" => send_email(&req, timeout).await,
        other => Err(SendError::Permanent(format!("unknown channel {other:?}"))),
    }
}

async fn send_email(req: &serde_json::Value, timeout: Duration) -> Result<(), SendError> {
    use lettre::message::{Mailbox, MultiPart, SinglePart, header::ContentType};
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::transport::smtp::client::{Tls, TlsParameters};
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
    let s = |k: &str| req[k].as_str().map(str::to_string);
    let smarthost = s("smarthost").ok_or_else(|| SendError::Permanent("no smarthost".into()))?;
    let (host, port) = match smarthost.rsplit_once(':') {
        Some((h, p)) => (
            h.to_string(),
            p.parse::<u16>().map_err(|_| {
                SendError::Permanent(format!("bad smarthost port in {smarthost:?}"))
            })?,
        ),
        None => (smarthost.clone(), 25),
    };
    let from: Mailbox = s("from")
        .unwrap_or_default()
        .parse()
        .map_err(|e| SendError::Permanent(format!("bad from address: {e}")))?;
    let mut mb = Message::builder()
        .from(from)
        .subject(s("subject").unwrap_or_default());
    for to in s("to")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        mb = mb.to(to
            .parse::<Mailbox>()
            .map_err(|e| SendError::Permanent(format!("bad to address {to:?}: {e}")))?);
    }
    let text = s("text").unwrap_or_default();
    let msg = match s("html") {
        Some(html) => mb.multipart(MultiPart::alternative_plain_html(text, html)),
        None => mb.singlepart(
            SinglePart::builder()
                .header(ContentType::TEXT_PLAIN)
                .body(text),
        ),
    }
    .map_err(|e| SendError::Permanent(format!("cannot build the e-mail: {e}")))?;
    let tls_params = || -> Result<TlsParameters, SendError> {
        let name = s("server_name").unwrap_or_else(|| host.clone());
        let mut b = TlsParameters::builder(name);
        if let Some(ca) = s("ca_file") {
            let pem = std::fs::read(&ca)
                .map_err(|e| SendError::Retry(format!("read ca_file {ca}: {e}")))?;
            let cert = lettre::transport::smtp::client::Certificate::from_pem(&pem)
                .map_err(|e| SendError::Permanent(format!("ca_file {ca}: {e}")))?;
            b = b.add_root_certificate(cert);
        }
        if req["insecure_skip_verify"].as_bool() == Some(true) {
            b = b.dangerous_accept_invalid_certs(true);
        }
        b.build_rustls()
            .map_err(|e| SendError::Permanent(format!("TLS parameters: {e}")))
    };
    let require_tls = req["require_tls"].as_bool().unwrap_or(true);
    let implicit = req["implicit_tls"].as_bool().unwrap_or(port == 465);
    let tls = if implicit {
        Tls::Wrapper(tls_params()?)
    } else if require_tls {
        Tls::Required(tls_params()?)
    } else {
        Tls::Opportunistic(tls_params()?)
    };
    let mut t = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.as_str())
        .port(port)
        .tls(tls)
        .timeout(Some(timeout));
    if let (Some(u), Some(p)) = (s("username"), s("password")) {
        t = t.credentials(Credentials::new(u, p));
    }
    t.build().send(msg).await.map(|_| ()).map_err(|e| {
        if e.is_permanent() {
            SendError::Permanent(format!("SMTP {smarthost}: {e}"))
        } else {
            SendError::Retry(format!("SMTP {smarthost}: {e}"))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let b = Duration::from_secs(1);
        let m = Duration::from_secs(60);
        for id in 0..50 {
            let d1 = backoff_ms(b, m, id, 1);
            assert!((800..=1200).contains(&d1), "{d1}");
            let d3 = backoff_ms(b, m, id, 3);
            assert!((3200..=4800).contains(&d3), "{d3}");
            let d20 = backoff_ms(b, m, id, 20);
            assert!((48_000..=72_000).contains(&d20), "{d20}");
        }
        // Jitter spreads retries of different notifications.
        let spread: std::collections::HashSet<i64> =
            (0..50).map(|id| backoff_ms(b, m, id, 2)).collect();
        assert!(spread.len() > 10);
    }
}

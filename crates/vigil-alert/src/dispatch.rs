//! The dispatcher: Alertmanager's routing, aggregation groups (`group_by`, `group_wait`,
//! `group_interval`, `repeat_interval`), silences, inhibition and time intervals, plus
//! escalation policies with acknowledgement. Pure and clock-driven: callers pass `now` and call
//! [`Dispatcher::flush_due`] at [`Dispatcher::next_due`]; the notifications it returns are what
//! the server writes to its outbox.

use std::collections::{BTreeMap, BTreeSet};

use hashbrown::{HashMap, HashSet};
use serde::{Deserialize, Serialize};
use vigil_model::Matcher;

use crate::alert::{Alert, AlertState, LabelMap};
use crate::config::{EscalationPolicy, NotifyConfig, RouteSpec, compile_matchers, matches};
use crate::silence::Silences;

const DEFAULT_GROUP_WAIT: i64 = 30_000;
const DEFAULT_GROUP_INTERVAL: i64 = 300_000;
const DEFAULT_REPEAT_INTERVAL: i64 = 4 * 3_600_000;

#[derive(Debug, Clone)]
enum GroupBy {
    Labels(Vec<String>),
    All,
}

#[derive(Debug, Clone)]
struct Route {
    id: String,
    matchers: Vec<Matcher>,
    receiver: String,
    group_by: GroupBy,
    continue_: bool,
    group_wait: i64,
    group_interval: i64,
    repeat_interval: i64,
    mute: Vec<String>,
    active: Vec<String>,
    escalation: Option<usize>,
    new_alert_wait: Option<i64>,
    children: Vec<usize>,
}

#[derive(Debug, Clone)]
struct Inhibit {
    source: Vec<Matcher>,
    target: Vec<Matcher>,
    equal: Vec<String>,
}

/// Who acknowledged an alert, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The token subject that acknowledged.
    pub by: String,
    /// When (ms).
    pub at: i64,
}

/// An alert as the dispatcher holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tracked {
    /// The alert (firing, or resolved and not yet notified as such).
    pub alert: Alert,
    /// Acknowledgement.
    pub ack: Option<Ack>,
}

/// What a receiver was last told about a group.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SentLog {
    /// Firing fingerprints notified.
    pub firing: BTreeSet<u64>,
    /// Resolved fingerprints notified.
    pub resolved: BTreeSet<u64>,
    /// When (ms).
    pub at: i64,
}

/// Escalation progress of one alert in one group.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Escalation {
    /// When it was first notified (the escalation clock starts).
    pub started_at: i64,
    /// Highest level notified so far.
    pub level: Option<usize>,
    /// When that level was notified (ms).
    pub level_at: i64,
    /// Receivers notified so far (they hear about the resolution).
    pub notified: BTreeSet<String>,
}

/// An aggregation group.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Group {
    /// Route id + group labels.
    pub key: String,
    /// The route's id.
    pub route: String,
    /// The grouping labels' values.
    pub labels: LabelMap,
    /// Member alerts.
    pub alerts: BTreeSet<u64>,
    /// When the group was created (ms).
    pub created_at: i64,
    /// Next regular flush (ms).
    pub next_flush: i64,
    /// Per receiver: what was last notified.
    pub sent: BTreeMap<String, SentLog>,
    /// Per alert: escalation progress.
    pub escalation: BTreeMap<u64, Escalation>,
}

/// An alert inside a notification.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NotifiedAlert {
    /// The alert.
    pub alert: Alert,
    /// `firing` or `resolved`.
    pub status: String,
    /// Acknowledgement, if any.
    pub ack: Option<Ack>,
}

/// One notification to one receiver.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Notification {
    /// Receiver name.
    pub receiver: String,
    /// Group key.
    pub group_key: String,
    /// Grouping labels.
    pub group_labels: LabelMap,
    /// `firing` when any alert fires, else `resolved`.
    pub status: String,
    /// The alerts.
    pub alerts: Vec<NotifiedAlert>,
    /// Escalation level this notification belongs to (`None`: the route's receiver).
    pub escalation_level: Option<usize>,
    /// Escalation policy name.
    pub escalation_policy: Option<String>,
    /// When it was produced (ms).
    pub created_at: i64,
}

impl Notification {
    /// Labels every alert shares.
    pub fn common_labels(&self) -> LabelMap {
        common(self.alerts.iter().map(|a| &a.alert.labels))
    }

    /// Annotations every alert shares.
    pub fn common_annotations(&self) -> LabelMap {
        common(self.alerts.iter().map(|a| &a.alert.annotations))
    }
}

fn common<'a>(mut it: impl Iterator<Item = &'a LabelMap>) -> LabelMap {
    let Some(first) = it.next() else {
        return LabelMap::new();
    };
    let mut c = first.clone();
    for m in it {
        c.retain(|k, v| m.get(k) == Some(v));
    }
    c
}

/// Why an alert is not being notified.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Mute {
    /// Silences muting it.
    #[serde(rename = "silencedBy")]
    pub silenced_by: Vec<String>,
    /// Fingerprints of the alerts inhibiting it.
    #[serde(rename = "inhibitedBy")]
    pub inhibited_by: Vec<String>,
}

/// The dispatcher.
#[derive(Debug)]
pub struct Dispatcher {
    routes: Vec<Route>,
    inhibits: Vec<Inhibit>,
    policies: Vec<EscalationPolicy>,
    intervals: HashMap<String, Vec<crate::config::TimeInterval>>,
    alerts: HashMap<u64, Tracked>,
    groups: BTreeMap<String, Group>,
    silences: Silences,
    dirty_groups: HashSet<String>,
    dirty_alerts: HashSet<u64>,
}

impl Dispatcher {
    /// Builds the routing tree from a checked configuration.
    pub fn new(cfg: &NotifyConfig) -> Result<Self, String> {
        cfg.check()?;
        let mut d = Dispatcher {
            routes: Vec::new(),
            inhibits: Vec::new(),
            policies: cfg.escalation_policies.clone(),
            intervals: cfg
                .time_intervals
                .iter()
                .chain(&cfg.mute_time_intervals)
                .map(|t| (t.name.clone(), t.time_intervals.clone()))
                .collect(),
            alerts: HashMap::new(),
            groups: BTreeMap::new(),
            silences: Silences::default(),
            dirty_groups: HashSet::new(),
            dirty_alerts: HashSet::new(),
        };
        let root = cfg.route.as_ref().ok_or("no route provided in config")?;
        d.add_route(root, None, "root".into())?;
        for i in &cfg.inhibit_rules {
            d.inhibits.push(Inhibit {
                source: compile_matchers(&i.source_matchers, &i.source_match, &i.source_match_re)?,
                target: compile_matchers(&i.target_matchers, &i.target_match, &i.target_match_re)?,
                equal: i.equal.clone(),
            });
        }
        Ok(d)
    }

    fn add_route(
        &mut self,
        spec: &RouteSpec,
        parent: Option<&Route>,
        id: String,
    ) -> Result<usize, String> {
        let inherit = |own: Option<crate::duration::PromDuration>, p: Option<i64>, def: i64| {
            own.map(|d| d.ms()).or(p).unwrap_or(def)
        };
        let group_by = match (&spec.group_by, parent) {
            (Some(g), _) if g.iter().any(|l| l == "...") => GroupBy::All,
            (Some(g), _) => GroupBy::Labels(g.clone()),
            (None, Some(p)) => p.group_by.clone(),
            (None, None) => GroupBy::Labels(Vec::new()),
        };
        let route = Route {
            id: id.clone(),
            matchers: compile_matchers(&spec.matchers, &spec.match_, &spec.match_re)?,
            receiver: spec
                .receiver
                .clone()
                .or_else(|| parent.map(|p| p.receiver.clone()))
                .ok_or("route without receiver")?,
            group_by,
            continue_: spec.continue_,
            group_wait: inherit(
                spec.group_wait,
                parent.map(|p| p.group_wait),
                DEFAULT_GROUP_WAIT,
            ),
            group_interval: inherit(
                spec.group_interval,
                parent.map(|p| p.group_interval),
                DEFAULT_GROUP_INTERVAL,
            ),
            repeat_interval: inherit(
                spec.repeat_interval,
                parent.map(|p| p.repeat_interval),
                DEFAULT_REPEAT_INTERVAL,
            ),
            mute: if spec.mute_time_intervals.is_empty() {
                parent.map(|p| p.mute.clone()).unwrap_or_default()
            } else {
                spec.mute_time_intervals.clone()
            },
            active: if spec.active_time_intervals.is_empty() {
                parent.map(|p| p.active.clone()).unwrap_or_default()
            } else {
                spec.active_time_intervals.clone()
            },
            new_alert_wait: spec
                .new_alert_wait
                .map(|d| d.ms())
                .or_else(|| parent.and_then(|p| p.new_alert_wait)),
            escalation: match &spec.escalation_policy {
                Some(p) => Some(
                    self.policies
                        .iter()
                        .position(|x| x.name == *p)
                        .ok_or_else(|| format!("undefined escalation policy {p:?}"))?,
                ),
                None => parent.and_then(|p| p.escalation),
            },
            children: Vec::new(),
        };
        let idx = self.routes.len();
        self.routes.push(route.clone());
        for (i, c) in spec.routes.iter().enumerate() {
            let cid = format!("{id}/{i}{{{}}}", c.matchers.join(","));
            let ci = self.add_route(c, Some(&route), cid)?;
            self.routes[idx].children.push(ci);
        }
        Ok(idx)
    }

    /// Replaces the configuration, keeping alerts, acknowledgements and the groups whose
    /// routes still exist.
    pub fn reconfigure(&mut self, cfg: &NotifyConfig, now: i64) -> Result<(), String> {
        let mut fresh = Dispatcher::new(cfg)?;
        fresh.silences = std::mem::take(&mut self.silences);
        let old_groups = std::mem::take(&mut self.groups);
        for k in old_groups.keys() {
            fresh.dirty_groups.insert(k.clone());
        }
        fresh.groups = old_groups
            .into_iter()
            .filter(|(_, g)| fresh.routes.iter().any(|r| r.id == g.route))
            .collect();
        let alerts = std::mem::take(&mut self.alerts);
        for (_, t) in alerts {
            fresh.alerts.insert(t.alert.fingerprint, t.clone());
            fresh.route_alert(&t.alert, now);
        }
        fresh.dirty_alerts = std::mem::take(&mut self.dirty_alerts);
        *self = fresh;
        Ok(())
    }

    /// Replaces the silences.
    pub fn set_silences(&mut self, s: Silences) {
        self.silences = s;
    }

    fn matching_routes(&self, idx: usize, labels: &LabelMap, out: &mut Vec<usize>) -> bool {
        let r = &self.routes[idx];
        if !matches(&r.matchers, labels) {
            return false;
        }
        let before = out.len();
        for &c in &r.children {
            let matched = self.matching_routes(c, labels, out);
            if matched && !self.routes[c].continue_ {
                break;
            }
        }
        if out.len() == before {
            out.push(idx);
        }
        true
    }

    fn group_key(&self, route: usize, labels: &LabelMap) -> (String, LabelMap) {
        let r = &self.routes[route];
        let gl: LabelMap = match &r.group_by {
            GroupBy::All => labels.clone(),
            GroupBy::Labels(names) => names
                .iter()
                .filter_map(|n| labels.get(n).map(|v| (n.clone(), v.clone())))
                .collect(),
        };
        let mut key = r.id.clone();
        key.push(':');
        for (k, v) in &gl {
            key.push_str(&format!("{k}={v:?},"));
        }
        (key, gl)
    }

    fn route_alert(&mut self, a: &Alert, now: i64) {
        let mut routes = Vec::new();
        self.matching_routes(0, &a.labels, &mut routes);
        for r in routes {
            let (key, gl) = self.group_key(r, &a.labels);
            let wait = self.routes[r].group_wait;
            let new_wait = self.routes[r].new_alert_wait;
            let rid = self.routes[r].id.clone();
            let g = self.groups.entry(key.clone()).or_insert_with(|| Group {
                key: key.clone(),
                route: rid,
                labels: gl,
                alerts: BTreeSet::new(),
                created_at: now,
                next_flush: now + wait,
                sent: BTreeMap::new(),
                escalation: BTreeMap::new(),
            });
            if g.alerts.insert(a.fingerprint) {
                // Vigil: a new alert in a group already notified need not wait a whole
                // group_interval.
                if let Some(w) = new_wait
                    && !g.sent.is_empty()
                    && g.sent.values().all(|l| !l.firing.contains(&a.fingerprint))
                {
                    g.next_flush = g.next_flush.min(now + w);
                }
                self.dirty_groups.insert(key);
            }
        }
    }

    /// Takes an alert's new state from a rule, a threshold or the health engine. Pending
    /// alerts are not notified (Alertmanager never sees them); resolved ones are, once.
    pub fn upsert(&mut self, a: &Alert, now: i64) {
        match a.state {
            AlertState::Pending => {}
            AlertState::Firing => {
                let fp = a.fingerprint;
                let new_episode = self.alerts.get(&fp).is_none_or(|t| {
                    t.alert.state != AlertState::Firing || t.alert.fired_at != a.fired_at
                });
                let t = self.alerts.entry(fp).or_insert_with(|| Tracked {
                    alert: a.clone(),
                    ack: None,
                });
                t.alert = a.clone();
                if new_episode {
                    t.ack = None;
                    for g in self.groups.values_mut() {
                        if g.escalation.remove(&fp).is_some() {
                            self.dirty_groups.insert(g.key.clone());
                        }
                    }
                }
                self.dirty_alerts.insert(fp);
                self.route_alert(a, now);
            }
            AlertState::Inactive => {
                if let Some(t) = self.alerts.get_mut(&a.fingerprint) {
                    t.alert = a.clone();
                    self.dirty_alerts.insert(a.fingerprint);
                }
            }
        }
    }

    /// Acknowledges a firing alert: stops its escalation and repeats. `false` if unknown or
    /// not firing.
    pub fn ack(&mut self, fp: u64, by: &str, now: i64) -> bool {
        match self.alerts.get_mut(&fp) {
            Some(t) if t.alert.state == AlertState::Firing => {
                t.ack = Some(Ack {
                    by: by.to_string(),
                    at: now,
                });
                self.dirty_alerts.insert(fp);
                true
            }
            _ => false,
        }
    }

    /// A tracked alert.
    pub fn get(&self, fp: u64) -> Option<&Tracked> {
        self.alerts.get(&fp)
    }

    /// All tracked alerts.
    pub fn tracked(&self) -> impl Iterator<Item = &Tracked> {
        self.alerts.values()
    }

    /// All groups.
    pub fn groups(&self) -> impl Iterator<Item = &Group> {
        self.groups.values()
    }

    /// Why `labels` are muted at `now` (silences, inhibitions).
    pub fn mute_of(&self, a: &Alert, now: i64) -> Mute {
        self.mute_with(&self.inhibitors(), a, now)
    }

    /// Why each of `alerts` is muted, finding the inhibiting alerts once for all of them.
    pub fn mutes(&self, alerts: &[&Alert], now: i64) -> Vec<Mute> {
        let srcs = self.inhibitors();
        alerts
            .iter()
            .map(|a| self.mute_with(&srcs, a, now))
            .collect()
    }

    /// Per inhibition rule, the firing alerts that match its source side.
    fn inhibitors(&self) -> Vec<Vec<&Alert>> {
        self.inhibits
            .iter()
            .map(|ih| {
                self.alerts
                    .values()
                    .map(|t| &t.alert)
                    .filter(|s| s.state == AlertState::Firing && matches(&ih.source, &s.labels))
                    .collect()
            })
            .collect()
    }

    fn mute_with(&self, srcs: &[Vec<&Alert>], a: &Alert, now: i64) -> Mute {
        let silenced_by = self.silences.muting(&a.labels, now);
        let mut inhibited_by = Vec::new();
        for (ih, sources) in self.inhibits.iter().zip(srcs) {
            if !matches(&ih.target, &a.labels) {
                continue;
            }
            // An alert matching both sides of a rule does not inhibit others that do too.
            let a_is_source = matches(&ih.source, &a.labels);
            for s in sources {
                let sl = &s.labels;
                if s.fingerprint != a.fingerprint
                    && !(a_is_source && matches(&ih.target, sl))
                    && ih.equal.iter().all(|l| sl.get(l) == a.labels.get(l))
                {
                    inhibited_by.push(format!("{:016x}", s.fingerprint));
                }
            }
        }
        Mute {
            silenced_by,
            inhibited_by,
        }
    }

    fn time_muted(&self, r: &Route, now: i64) -> bool {
        let active = |name: &String| {
            self.intervals
                .get(name)
                .is_some_and(|ts| ts.iter().any(|t| crate::timeint::contains(t, now)))
        };
        r.mute.iter().any(active) || (!r.active.is_empty() && !r.active.iter().any(active))
    }

    /// When [`Dispatcher::flush_due`] next has work (ms).
    pub fn next_due(&self) -> Option<i64> {
        let mut best = self.groups.values().map(|g| g.next_flush).min();
        for g in self.groups.values() {
            if let Some(t) = self.next_escalation(g) {
                best = Some(best.map_or(t, |b| b.min(t)));
            }
        }
        best
    }

    fn policy_of(&self, g: &Group) -> Option<(usize, &EscalationPolicy)> {
        let r = self.routes.iter().find(|r| r.id == g.route)?;
        r.escalation.map(|i| (i, &self.policies[i]))
    }

    fn next_escalation(&self, g: &Group) -> Option<i64> {
        let (_, p) = self.policy_of(g)?;
        let mut best: Option<i64> = None;
        for (fp, e) in &g.escalation {
            let Some(t) = self.alerts.get(fp) else {
                continue;
            };
            if t.ack.is_some() || t.alert.state != AlertState::Firing {
                continue;
            }
            let next = match e.level {
                None => Some(e.started_at + p.levels[0].delay.ms()),
                Some(l) if l + 1 < p.levels.len() => Some(e.level_at + p.levels[l + 1].delay.ms()),
                Some(_) => p.repeat_last_level.map(|r| e.level_at + r.ms().max(1000)),
            };
            if let Some(n) = next {
                best = Some(best.map_or(n, |b| b.min(n)));
            }
        }
        best
    }

    /// Flushes every group that is due at `now` and returns the notifications to send.
    pub fn flush_due(&mut self, now: i64) -> Vec<Notification> {
        let due: Vec<String> = self
            .groups
            .values()
            .filter(|g| g.next_flush <= now || self.next_escalation(g).is_some_and(|t| t <= now))
            .map(|g| g.key.clone())
            .collect();
        let mut out = Vec::new();
        for k in due {
            self.flush_group(&k, now, &mut out);
        }
        out
    }

    fn flush_group(&mut self, key: &str, now: i64, out: &mut Vec<Notification>) {
        let Some(g) = self.groups.get(key).cloned() else {
            return;
        };
        let Some(ri) = self.routes.iter().position(|r| r.id == g.route) else {
            self.groups.remove(key);
            self.dirty_groups.insert(key.to_string());
            return;
        };
        let route = self.routes[ri].clone();
        let policy = route.escalation.map(|i| self.policies[i].clone());
        let regular = g.next_flush <= now;
        let muted_by_time = self.time_muted(&route, now);
        let mut firing: Vec<&Tracked> = Vec::new();
        let mut resolved: Vec<&Tracked> = Vec::new();
        let inhibitors = self.inhibitors();
        for fp in &g.alerts {
            let Some(t) = self.alerts.get(fp) else {
                continue;
            };
            match t.alert.state {
                AlertState::Firing => {
                    let m = self.mute_with(&inhibitors, &t.alert, now);
                    if m.silenced_by.is_empty() && m.inhibited_by.is_empty() {
                        firing.push(t);
                    }
                }
                _ => resolved.push(t),
            }
        }
        let firing_set: BTreeSet<u64> = firing.iter().map(|t| t.alert.fingerprint).collect();
        let resolved_set: BTreeSet<u64> = resolved.iter().map(|t| t.alert.fingerprint).collect();
        let mk = |receiver: &str, list: Vec<&Tracked>, level: Option<usize>| {
            let any_firing = list.iter().any(|t| t.alert.state == AlertState::Firing);
            Notification {
                receiver: receiver.to_string(),
                group_key: g.key.clone(),
                group_labels: g.labels.clone(),
                status: if any_firing { "firing" } else { "resolved" }.into(),
                alerts: list
                    .iter()
                    .map(|t| NotifiedAlert {
                        alert: t.alert.clone(),
                        status: if t.alert.state == AlertState::Firing {
                            "firing"
                        } else {
                            "resolved"
                        }
                        .into(),
                        ack: t.ack.clone(),
                    })
                    .collect(),
                escalation_level: level,
                escalation_policy: policy.as_ref().map(|p| p.name.clone()),
                created_at: now,
            }
        };
        let mut new_g = g.clone();
        let mut notified_resolved = false;
        let first_out = out.len();
        if regular && !muted_by_time {
            // The route's receiver, with Alertmanager's notification-log rules.
            let log = g.sent.get(&route.receiver);
            let unacked_firing = firing.iter().any(|t| t.ack.is_none());
            let needs = match log {
                None => !firing_set.is_empty(),
                Some(l) => {
                    !firing_set.is_subset(&l.firing)
                        || (firing_set.is_empty() && !l.firing.is_empty())
                        || !resolved_set
                            .iter()
                            .filter(|fp| l.firing.contains(fp))
                            .all(|fp| l.resolved.contains(fp))
                        || (!firing_set.is_empty()
                            && unacked_firing
                            && now - l.at >= route.repeat_interval)
                }
            };
            if needs {
                // Only resolutions of alerts this receiver was told about are news to it.
                let told: BTreeSet<u64> = log.map(|l| l.firing.clone()).unwrap_or_default();
                let mut list: Vec<&Tracked> = firing.clone();
                list.extend(
                    resolved
                        .iter()
                        .filter(|t| told.contains(&t.alert.fingerprint)),
                );
                if !list.is_empty() {
                    out.push(mk(&route.receiver, list, None));
                }
                new_g.sent.insert(
                    route.receiver.clone(),
                    SentLog {
                        firing: firing_set.clone(),
                        resolved: resolved_set.clone(),
                        at: now,
                    },
                );
                notified_resolved = true;
            } else if firing_set.is_empty() {
                notified_resolved = true;
            }
            new_g.next_flush = now + route.group_interval;
        } else if regular {
            new_g.next_flush = now + route.group_interval;
        }
        // Escalation: per unacknowledged firing alert.
        if let Some(p) = &policy
            && !muted_by_time
        {
            let mut by_level: BTreeMap<usize, Vec<&Tracked>> = BTreeMap::new();
            for t in &firing {
                let fp = t.alert.fingerprint;
                if t.ack.is_some() {
                    continue;
                }
                let e = new_g.escalation.entry(fp).or_insert_with(|| Escalation {
                    started_at: now,
                    level: None,
                    level_at: now,
                    notified: BTreeSet::new(),
                });
                loop {
                    let due = match e.level {
                        None => e.started_at + p.levels[0].delay.ms(),
                        Some(l) if l + 1 < p.levels.len() => {
                            e.level_at + p.levels[l + 1].delay.ms()
                        }
                        Some(l) => match p.repeat_last_level {
                            Some(r) if now >= e.level_at + r.ms().max(1000) => {
                                e.level_at = now;
                                by_level.entry(l).or_default().push(t);
                                break;
                            }
                            _ => break,
                        },
                    };
                    if now < due {
                        break;
                    }
                    let l = e.level.map_or(0, |l| l + 1);
                    e.level = Some(l);
                    e.level_at = now;
                    e.notified.extend(p.levels[l].receivers.iter().cloned());
                    by_level.entry(l).or_default().push(t);
                }
            }
            for (l, list) in by_level {
                for r in &p.levels[l].receivers {
                    // Already told in this flush by the route itself: no duplicate page.
                    if out[first_out..]
                        .iter()
                        .any(|n| n.receiver == *r && n.escalation_level.is_none())
                    {
                        continue;
                    }
                    out.push(mk(r, list.clone(), Some(l)));
                }
            }
            // Resolutions go to every escalation receiver that heard of the alert.
            if notified_resolved {
                let mut per_receiver: BTreeMap<String, Vec<&Tracked>> = BTreeMap::new();
                for t in &resolved {
                    if let Some(e) = new_g.escalation.remove(&t.alert.fingerprint) {
                        for r in e.notified {
                            if r != route.receiver {
                                per_receiver.entry(r).or_default().push(t);
                            }
                        }
                    }
                }
                for (r, list) in per_receiver {
                    out.push(mk(&r, list, None));
                }
            }
        }
        if notified_resolved {
            for fp in &resolved_set {
                new_g.alerts.remove(fp);
                new_g.escalation.remove(fp);
            }
        }
        // Forget escalation state of alerts that left the group.
        new_g.escalation.retain(|fp, _| new_g.alerts.contains(fp));
        self.dirty_groups.insert(key.to_string());
        if new_g.alerts.is_empty() {
            self.groups.remove(key);
        } else {
            self.groups.insert(key.to_string(), new_g);
        }
        if notified_resolved {
            for fp in resolved_set {
                if !self.groups.values().any(|g| g.alerts.contains(&fp)) {
                    self.alerts.remove(&fp);
                    self.dirty_alerts.insert(fp);
                }
            }
        }
    }

    /// Groups changed since the last call: `(key, Some(group))` to save, `(key, None)` to delete.
    pub fn take_dirty_groups(&mut self) -> Vec<(String, Option<Group>)> {
        self.dirty_groups
            .drain()
            .map(|k| {
                let g = self.groups.get(&k).cloned();
                (k, g)
            })
            .collect()
    }

    /// Tracked alerts changed since the last call: `(fp, Some(tracked))` to save, `(fp, None)`
    /// to delete.
    pub fn take_dirty_alerts(&mut self) -> Vec<(u64, Option<Tracked>)> {
        self.dirty_alerts
            .drain()
            .map(|fp| (fp, self.alerts.get(&fp).cloned()))
            .collect()
    }

    /// Puts back state saved before a restart.
    pub fn restore(&mut self, alerts: Vec<Tracked>, groups: Vec<Group>) {
        for t in alerts {
            self.alerts.insert(t.alert.fingerprint, t);
        }
        for g in groups {
            if self.routes.iter().any(|r| r.id == g.route) {
                self.groups.insert(g.key.clone(), g);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::{ENV_LABEL, fingerprint};
    use crate::silence::{Silence, SilenceMatcher};

    fn alert(name: &str, zone: &str, severity: &str, at: i64) -> Alert {
        let mut l: LabelMap = [("alertname", name), ("zone", zone), ("severity", severity)]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        l.insert(ENV_LABEL.into(), "prod".into());
        Alert {
            fingerprint: fingerprint(&l),
            env: "prod".into(),
            labels: l,
            annotations: LabelMap::new(),
            state: AlertState::Firing,
            value: 1.0,
            active_at: at,
            fired_at: Some(at),
            resolved_at: None,
            keep_firing_since: None,
            source: "test".into(),
        }
    }

    fn cfg(y: &str) -> Dispatcher {
        Dispatcher::new(&NotifyConfig::parse(y).unwrap()).unwrap()
    }

    const BASE: &str = r#"
route:
  receiver: ops
  group_by: [alertname]
  group_wait: 30s
  group_interval: 5m
  repeat_interval: 1h
  routes:
    - matchers: ['severity="critical"']
      receiver: pager
      group_wait: 0s
      escalation_policy: crit
receivers:
  - name: ops
  - name: pager
  - name: lead
  - name: cto
escalation_policies:
  - name: crit
    levels:
      - {receivers: [pager]}
      - {delay: 5m, receivers: [lead]}
      - {delay: 10m, receivers: [cto]}
inhibit_rules:
  - source_matchers: ['alertname="ZonePartitionSuspected"']
    target_matchers: ['alertname="AgentFailed"']
    equal: [zone]
"#;

    fn receivers(n: &[Notification]) -> Vec<(String, String, usize)> {
        n.iter()
            .map(|n| (n.receiver.clone(), n.status.clone(), n.alerts.len()))
            .collect()
    }

    #[test]
    fn group_wait_then_group_interval_then_repeat() {
        let mut d = cfg(BASE);
        let a = alert("HighCPU", "eu", "warning", 0);
        d.upsert(&a, 0);
        assert_eq!(d.next_due(), Some(30_000));
        assert!(d.flush_due(29_999).is_empty());
        let n = d.flush_due(30_000);
        assert_eq!(receivers(&n), vec![("ops".into(), "firing".into(), 1)]);
        // A second alert joins the notified group: waits for group_interval.
        let b = alert("HighCPU", "us", "warning", 40_000);
        d.upsert(&b, 40_000);
        assert!(d.flush_due(100_000).is_empty());
        let n = d.flush_due(330_000);
        assert_eq!(receivers(&n), vec![("ops".into(), "firing".into(), 2)]);
        // Nothing new: silent until repeat_interval.
        assert!(d.flush_due(630_000).is_empty());
        let mut t = 630_000;
        let mut repeats = 0;
        while t <= 330_000 + 3_600_000 {
            t += 300_000;
            repeats += d.flush_due(t).len();
        }
        assert_eq!(repeats, 1, "one repeat after an hour");
        // Resolution.
        let mut r = a.clone();
        r.state = AlertState::Inactive;
        r.resolved_at = Some(t);
        d.upsert(&r, t);
        let n = d.flush_due(t + 300_000);
        assert_eq!(n.len(), 1);
        assert_eq!(
            n[0].alerts
                .iter()
                .filter(|x| x.status == "resolved")
                .count(),
            1
        );
        assert_eq!(
            d.groups().next().unwrap().alerts.len(),
            1,
            "resolved alert left the group"
        );
    }

    #[test]
    fn new_alert_wait_shortcuts_group_interval() {
        let y = BASE.replace(
            "  repeat_interval: 1h\n",
            "  repeat_interval: 1h\n  new_alert_wait: 2s\n",
        );
        let mut d = cfg(&y);
        d.upsert(&alert("HighCPU", "eu", "warning", 0), 0);
        assert_eq!(d.flush_due(30_000).len(), 1);
        // Alertmanager would wait until 330 s; with new_alert_wait the newcomer goes at 42 s.
        d.upsert(&alert("HighCPU", "us", "warning", 40_000), 40_000);
        assert!(d.flush_due(41_999).is_empty());
        let n = d.flush_due(42_000);
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].alerts.len(), 2);
        // A re-sent existing alert (e.g. an annotation change) does not shortcut anything.
        d.upsert(&alert("HighCPU", "us", "warning", 40_000), 50_000);
        assert!(d.flush_due(60_000).is_empty());
    }

    #[test]
    fn escalation_until_acknowledged() {
        let mut d = cfg(BASE);
        let a = alert("DiskFull", "eu", "critical", 0);
        d.upsert(&a, 0);
        // group_wait 0: the route receiver and level 0 at once.
        let n = d.flush_due(0);
        assert_eq!(receivers(&n), vec![("pager".into(), "firing".into(), 1)]);
        assert_eq!(n[0].escalation_level, None);
        assert_eq!(d.next_due(), Some(300_000));
        let n = d.flush_due(300_000);
        assert_eq!(receivers(&n), vec![("lead".into(), "firing".into(), 1)]);
        assert_eq!(n[0].escalation_level, Some(1));
        assert!(d.ack(a.fingerprint, "ana", 400_000));
        // Acknowledged: no cto at 15 min, no repeats.
        for t in (400_000..=5_000_000).step_by(100_000) {
            assert!(
                d.flush_due(t).iter().all(|n| n.receiver != "cto"),
                "escalated after ack at {t}"
            );
        }
        assert_eq!(
            d.get(a.fingerprint).unwrap().ack.as_ref().unwrap().by,
            "ana"
        );
        // Resolution reaches everyone who heard of it.
        let mut r = a.clone();
        r.state = AlertState::Inactive;
        d.upsert(&r, 5_000_000);
        let n = d.flush_due(5_300_000);
        let mut who: Vec<String> = n.iter().map(|n| n.receiver.clone()).collect();
        who.sort();
        assert_eq!(who, vec!["lead".to_string(), "pager".to_string()]);
        assert!(n.iter().all(|n| n.status == "resolved"));
    }

    #[test]
    fn escalation_runs_all_levels_without_ack() {
        let mut d = cfg(BASE);
        let a = alert("DiskFull", "eu", "critical", 0);
        d.upsert(&a, 0);
        let mut seen = Vec::new();
        let mut t = 0;
        while t <= 2_000_000 {
            for n in d.flush_due(t) {
                if let Some(l) = n.escalation_level {
                    seen.push((l, n.receiver, t));
                }
            }
            t = d.next_due().unwrap_or(t + 1).max(t + 1);
        }
        assert_eq!(
            seen,
            // Level 0 (pager) is the route's own receiver, paged at 0 s without a duplicate.
            vec![
                (1, "lead".to_string(), 300_000),
                (2, "cto".to_string(), 900_000)
            ]
        );
    }

    #[test]
    fn last_level_repeats_until_acknowledged() {
        let y = BASE.replace(
            "      - {delay: 10m, receivers: [cto]}",
            "      - {delay: 10m, receivers: [cto]}\n    repeat_last_level: 2m",
        );
        let mut d = cfg(&y);
        let a = alert("DiskFull", "eu", "critical", 0);
        d.upsert(&a, 0);
        let mut cto = Vec::new();
        let mut t = 0;
        let mut acked = false;
        while t <= 1_500_000 {
            if t >= 1_300_000 && !acked {
                acked = d.ack(a.fingerprint, "ana", t);
            }
            for n in d.flush_due(t) {
                if n.receiver == "cto" {
                    cto.push(t);
                }
            }
            t = d.next_due().unwrap_or(t + 1).max(t + 1).min(t + 60_000);
        }
        // Level 2 at 15 min, then every 2 min until the acknowledgement (~21:40).
        assert_eq!(cto, vec![900_000, 1_020_000, 1_140_000, 1_260_000]);
    }

    #[test]
    fn silences_and_inhibition_mute() {
        let mut d = cfg(BASE);
        let failed = alert("AgentFailed", "eu", "warning", 0);
        let part = alert("ZonePartitionSuspected", "eu", "warning", 0);
        let other_zone = alert("AgentFailed", "us", "warning", 0);
        d.upsert(&failed, 0);
        d.upsert(&part, 0);
        d.upsert(&other_zone, 0);
        assert_eq!(d.mute_of(&failed, 0).inhibited_by.len(), 1);
        assert!(d.mute_of(&other_zone, 0).inhibited_by.is_empty());
        let n = d.flush_due(30_000);
        let failed_notified: Vec<&String> = n
            .iter()
            .flat_map(|n| &n.alerts)
            .filter(|a| a.alert.labels["alertname"] == "AgentFailed")
            .map(|a| &a.alert.labels["zone"])
            .collect();
        assert_eq!(
            failed_notified,
            vec!["us"],
            "the partitioned zone's failure is inhibited"
        );
        d.set_silences(Silences::new(vec![Silence {
            id: "s".into(),
            env: "prod".into(),
            matchers: vec![SilenceMatcher {
                name: "zone".into(),
                value: "us".into(),
                is_regex: false,
                is_equal: true,
            }],
            starts_at: 0,
            ends_at: 10_000_000,
            created_by: "me".into(),
            comment: "planned".into(),
            updated_at: 0,
        }]));
        assert_eq!(
            d.mute_of(&other_zone, 40_000).silenced_by,
            vec!["s".to_string()]
        );
    }

    #[test]
    fn continue_and_default_route() {
        let y = r#"
route:
  receiver: default
  group_wait: 0s
  routes:
    - {matchers: ['zone="eu"'], receiver: eu, continue: true}
    - {matchers: ['severity="warning"'], receiver: warn}
    - {matchers: ['severity="warning"'], receiver: never}
receivers: [{name: default}, {name: eu}, {name: warn}, {name: never}]
"#;
        let mut d = cfg(y);
        d.upsert(&alert("A", "eu", "warning", 0), 0);
        d.upsert(&alert("B", "us", "info", 0), 0);
        let mut r: Vec<String> = d.flush_due(0).into_iter().map(|n| n.receiver).collect();
        r.sort();
        assert_eq!(r, vec!["default", "eu", "warn"]);
    }

    #[test]
    fn state_survives_a_restart_mid_escalation() {
        let mut d = cfg(BASE);
        let a = alert("DiskFull", "eu", "critical", 0);
        d.upsert(&a, 0);
        d.flush_due(0);
        let alerts: Vec<Tracked> = d
            .take_dirty_alerts()
            .into_iter()
            .filter_map(|(_, t)| t)
            .collect();
        let groups: Vec<Group> = d
            .take_dirty_groups()
            .into_iter()
            .filter_map(|(_, g)| g)
            .collect();
        let mut d2 = cfg(BASE);
        d2.restore(alerts, groups);
        assert_eq!(d2.next_due(), Some(300_000));
        let n = d2.flush_due(300_000);
        assert_eq!(receivers(&n), vec![("lead".into(), "firing".into(), 1)]);
    }
}

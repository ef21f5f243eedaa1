//! Alerting API: Prometheus' `/api/v1/rules` and `/api/v1/alerts` shapes (built here, served
//! by [`crate::http::prom`]), and Vigil's admin endpoints under `/api/telemetry/admin/`:
//! threshold rules, rule namespaces, silences, alerts with acknowledgement, aggregation groups,
//! the delivery log, analytics, channels and reload. Everything is scoped to the caller's
//! environment.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use vigil_alert::payload::rfc3339;
use vigil_alert::rules::{Rule, RuleHealth};
use vigil_alert::silence::SilenceMatcher;
use vigil_alert::{Alert, AlertState, Silence, ThresholdRule};

use crate::alerting::parse_fp;
use crate::auth::Need;
use crate::http::error::ApiError;
use crate::http::extract::authorize;
use crate::http::state::AppState;

const MAX_BODY: usize = 4 << 20;

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
}

fn not_found(what: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", what)
}

/// 204 when something was deleted, else 404 naming it.
fn deleted(found: bool, what: impl FnOnce() -> String) -> Result<Response, ApiError> {
    if found {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(not_found(what()))
    }
}

async fn body_bytes(body: Body) -> Result<axum::body::Bytes, ApiError> {
    axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("body larger than {MAX_BODY} bytes"),
        )
    })
}

/// Go's `strconv.FormatFloat(v, 'e', -1, 64)`, as Prometheus prints alert values.
pub fn go_exp(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    let s = format!("{v:e}");
    let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
    let e: i32 = e.parse().unwrap_or(0);
    format!("{m}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs())
}

fn prom_labels(a: &Alert) -> BTreeMap<String, String> {
    let mut l = a.labels.clone();
    l.remove(vigil_alert::ENV_LABEL);
    l
}

fn prom_alert(a: &Alert) -> Value {
    let mut o = json!({
        "labels": prom_labels(a),
        "annotations": a.annotations,
        "state": a.state.as_str(),
        "activeAt": rfc3339(a.active_at),
        "value": go_exp(a.value),
    });
    if let Some(k) = a.keep_firing_since {
        o["keepFiringSince"] = json!(rfc3339(k));
    }
    o
}

fn rule_state(alerts: &[&Alert]) -> &'static str {
    if alerts.iter().any(|a| a.state == AlertState::Firing) {
        "firing"
    } else if alerts.iter().any(|a| a.state == AlertState::Pending) {
        "pending"
    } else {
        "inactive"
    }
}

fn health_str(h: &RuleHealth) -> &'static str {
    match h {
        RuleHealth::Unknown => "unknown",
        RuleHealth::Ok => "ok",
        RuleHealth::Err => "err",
    }
}

/// `data` of `GET /api/v1/rules` for `env`: the rule files' groups, then Vigil's threshold
/// rules and built-in health rules as two more groups. `kind` filters `alert`/`record`.
pub fn rules_data(state: &AppState, env: &str, kind: Option<&str>, exclude_alerts: bool) -> Value {
    let al = &state.0.alerting;
    let want_alert = kind.is_none_or(|k| k == "alert");
    let want_record = kind.is_none_or(|k| k == "record");
    let mut groups: Vec<Value> = al.with_groups(
        |gs| {
            gs.iter()
                .map(|g| {
                    let rules: Vec<Value> = g
                        .rules
                        .iter()
                        .filter_map(|r| match r {
                            Rule::Alerting(a) if want_alert => {
                                let active: Vec<&Alert> = a.active.values().filter(|x| x.state != AlertState::Inactive).collect();
                                let mut o = json!({
                                    "state": rule_state(&active),
                                    "name": a.name,
                                    "query": a.spec.expr,
                                    "duration": a.spec.for_.map_or(0, |d| d.ms() / 1000),
                                    "keepFiringFor": a.spec.keep_firing_for.map_or(0, |d| d.ms() / 1000),
                                    "labels": a.spec.labels,
                                    "annotations": a.spec.annotations,
                                    "health": health_str(&a.status.health),
                                    "lastError": a.status.last_error.clone().unwrap_or_default(),
                                    "evaluationTime": a.status.eval_seconds,
                                    "lastEvaluation": a.status.last_eval.map_or_else(|| "0001-01-01T00:00:00Z".into(), rfc3339),
                                    "type": "alerting",
                                });
                                if !exclude_alerts {
                                    o["alerts"] = Value::Array(active.iter().map(|x| prom_alert(x)).collect());
                                }
                                Some(o)
                            }
                            Rule::Recording(r) if want_record => Some(json!({
                                "name": r.name,
                                "query": r.spec.expr,
                                "labels": r.spec.labels,
                                "health": health_str(&r.status.health),
                                "lastError": r.status.last_error.clone().unwrap_or_default(),
                                "evaluationTime": r.status.eval_seconds,
                                "lastEvaluation": r.status.last_eval.map_or_else(|| "0001-01-01T00:00:00Z".into(), rfc3339),
                                "type": "recording",
                            })),
                            _ => None,
                        })
                        .collect();
                    json!({
                        "name": g.spec.name,
                        "file": g.file,
                        "interval": g.interval_ms as f64 / 1000.0,
                        "limit": g.spec.limit,
                        "rules": rules,
                        "evaluationTime": g.last_eval_seconds,
                        "lastEvaluation": g.last_eval.map_or_else(|| "0001-01-01T00:00:00Z".into(), rfc3339),
                    })
                })
                .collect()
        },
        env,
    );
    if want_alert {
        let alerts = al.alerts(Some(env));
        let thresholds: Vec<Value> = al
            .threshold_rules(env)
            .into_iter()
            .map(|t| {
                let src = format!("threshold:{}", t.id);
                let active: Vec<&Alert> = alerts
                    .iter()
                    .filter(|a| a.source == src && a.state != AlertState::Inactive)
                    .collect();
                let mut o = json!({
                    "state": rule_state(&active),
                    "name": t.name,
                    "query": threshold_query(&t),
                    "duration": t.for_.ms() / 1000,
                    "keepFiringFor": t.keep_firing_for.ms() / 1000,
                    "labels": t.labels,
                    "annotations": t.annotations,
                    "health": "ok",
                    "lastError": "",
                    "evaluationTime": 0.0,
                    "lastEvaluation": "0001-01-01T00:00:00Z",
                    "type": "alerting",
                });
                if !exclude_alerts {
                    o["alerts"] = Value::Array(active.iter().map(|x| prom_alert(x)).collect());
                }
                o
            })
            .collect();
        if !thresholds.is_empty() {
            groups.push(json!({"name": "vigil-thresholds", "file": "api:/api/telemetry/admin/thresholds", "interval": 0, "limit": 0, "rules": thresholds, "evaluationTime": 0.0, "lastEvaluation": "0001-01-01T00:00:00Z"}));
        }
        let h = &al.options().health;
        let mut health = Vec::new();
        for (on, name, query) in [
            (
                h.agent_failed,
                "AgentFailed",
                "vigil failure detector: agent declared failed",
            ),
            (
                h.partition,
                "ZonePartitionSuspected",
                "vigil failure detector: zone or segment silent together",
            ),
            (
                h.check_failing,
                "AgentCheckFailing",
                "vigil heartbeat: agent reports failing checks",
            ),
            (
                h.availability_slo > 0.0,
                "AvailabilityBelowSLO",
                "vigil availability below the configured SLO",
            ),
        ] {
            if !on {
                continue;
            }
            let src = format!("health:{name}");
            let active: Vec<&Alert> = alerts
                .iter()
                .filter(|a| a.source == src && a.state != AlertState::Inactive)
                .collect();
            let mut o = json!({"state": rule_state(&active), "name": name, "query": query, "duration": 0, "keepFiringFor": 0, "labels": {}, "annotations": {}, "health": "ok", "lastError": "", "evaluationTime": 0.0, "lastEvaluation": "0001-01-01T00:00:00Z", "type": "alerting"});
            if !exclude_alerts {
                o["alerts"] = Value::Array(active.iter().map(|x| prom_alert(x)).collect());
            }
            health.push(o);
        }
        if !health.is_empty() {
            groups.push(json!({"name": "vigil-health", "file": "builtin", "interval": 0, "limit": 0, "rules": health, "evaluationTime": 0.0, "lastEvaluation": "0001-01-01T00:00:00Z"}));
        }
    }
    json!({ "groups": groups })
}

fn threshold_query(t: &ThresholdRule) -> String {
    let ms: Vec<String> = t
        .matchers
        .iter()
        .map(|m| format!("{}{}{:?}", m.name, m.op, m.value))
        .collect();
    let sel = if ms.is_empty() {
        t.metric.clone()
    } else {
        format!("{}{{{}}}", t.metric, ms.join(","))
    };
    format!(
        "{sel} {} {}",
        t.op.as_str(),
        vigil_promql::format_value(t.value)
    )
}

/// `data` of `GET /api/v1/alerts` for `env`.
pub fn alerts_data(state: &AppState, env: &str) -> Value {
    let alerts: Vec<Value> = state
        .0
        .alerting
        .alerts(Some(env))
        .iter()
        .filter(|a| a.state != AlertState::Inactive)
        .map(prom_alert)
        .collect();
    json!({ "alerts": alerts })
}

// ---------------------------------------------------------------------- thresholds

/// `GET /api/telemetry/admin/thresholds`
pub async fn list_thresholds(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (_, env) = authorize(&state, &headers, Need::Read)?;
    Ok(
        axum::Json(json!({"thresholds": state.0.alerting.threshold_rules(env.as_str())}))
            .into_response(),
    )
}

fn parse_threshold(bytes: &[u8]) -> Result<ThresholdRule, ApiError> {
    let r: ThresholdRule = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::bad_request("invalid_threshold", format!("not a threshold rule: {e}"))
    })?;
    let errs = r.validate();
    if !errs.is_empty() {
        return Err(ApiError::bad_request("invalid_threshold", errs.join("; "))
            .with_details(json!({"errors": errs})));
    }
    Ok(r)
}

fn new_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let mut h =
        t ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(std::process::id()).rotate_left(32);
    h ^= h >> 29;
    h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    format!("{:016x}", h ^ (h >> 32))
}

/// `POST /api/telemetry/admin/thresholds`: creates a rule (an id is assigned when absent).
pub async fn create_threshold(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (_, env) = authorize(&state, &headers, Need::Operate)?;
    let mut r = parse_threshold(&body_bytes(body).await?)?;
    if r.id.is_empty() {
        r.id = new_id();
    } else if !valid_id(&r.id) {
        return Err(ApiError::bad_request(
            "invalid_threshold",
            "id: 1–64 characters of A-Za-z0-9._-",
        ));
    }
    if state
        .0
        .alerting
        .threshold_rules(env.as_str())
        .iter()
        .any(|x| x.id == r.id)
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "exists",
            format!(
                "threshold rule {:?} already exists; PUT to replace it",
                r.id
            ),
        ));
    }
    state
        .0
        .alerting
        .put_threshold(env.as_str(), r.clone())
        .map_err(internal)?;
    Ok((StatusCode::CREATED, axum::Json(r)).into_response())
}

fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// `PUT /api/telemetry/admin/thresholds`: replaces every threshold rule of the environment
/// with `{"thresholds": [...]}` (ids assigned where absent), all or nothing.
pub async fn replace_thresholds(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (_, env) = authorize(&state, &headers, Need::Operate)?;
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Bulk {
        thresholds: Vec<ThresholdRule>,
    }
    let bytes = body_bytes(body).await?;
    let mut b: Bulk = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(
            "invalid_threshold",
            format!("not a list of threshold rules: {e}"),
        )
    })?;
    for (i, r) in b.thresholds.iter_mut().enumerate() {
        if r.id.is_empty() {
            r.id = new_id();
        } else if !valid_id(&r.id) {
            return Err(ApiError::bad_request(
                "invalid_threshold",
                format!("thresholds[{i}].id: 1–64 characters of A-Za-z0-9._-"),
            ));
        }
        let errs = r.validate();
        if !errs.is_empty() {
            return Err(ApiError::bad_request(
                "invalid_threshold",
                format!("thresholds[{i}]: {}", errs.join("; ")),
            )
            .with_details(json!({"index": i, "errors": errs})));
        }
    }
    let n = b.thresholds.len();
    let al = state.0.alerting.clone();
    let e = env.as_str().to_string();
    tokio::task::spawn_blocking(move || al.replace_thresholds(&e, b.thresholds))
        .await
        .map_err(internal)?
        .map_err(|e| ApiError::bad_request("invalid_threshold", e))?;
    Ok(axum::Json(json!({"thresholds": n})).into_response())
}

/// `GET /api/telemetry/admin/thresholds/{id}`
pub async fn get_threshold(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (_, env) = authorize(&state, &headers, Need::Read)?;
    let r = state
        .0
        .alerting
        .threshold_rules(env.as_str())
        .into_iter()
        .find(|r| r.id == id)
        .ok_or_else(|| not_found(format!("no threshold rule {id:?} in environment {env}")))?;
    Ok(axum::Json(r).into_response())
}

/// `PUT /api/telemetry/admin/thresholds/{id}`: creates or replaces.
pub async fn put_threshold(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let (_, env) = authorize(&state, &headers, Need::Operate)?;
    if !valid_id(&id) {
        return Err(ApiError::bad_request(
            "invalid_threshold",
            "id: 1–64 characters of A-Za-z0-9._-",
        ));
    }
    let mut r = parse_threshold(&body_bytes(body).await?)?;
    if !r.id.is_empty() && r.id != id {
        return Err(ApiError::bad_request(
            "invalid_threshold",
            format!("body id {:?} differs from path id {id:?}", r.id),
        ));
    }
    r.id = id;
    state
        .0
        .alerting
        .put_threshold(env.as_str(), r.clone())
        .map_err(internal)?;
    Ok(axum::Json(r).into_response())
}

/// `DELETE /api/telemetry/admin/thresholds/{id}`
pub async fn delete_threshold(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (_, env) = authorize(&state, &headers, Need::Operate)?;
    let found = state
        .0
        .alerting
        .delete_threshold(env.as_str(), &id)
        .map_err(internal)?;
    deleted(found, || {
        format!("no threshold rule {id:?} in environment {env}")
    })
}

// ---------------------------------------------------------------------- rule namespaces

/// `GET /api/telemetry/admin/rules`: API-managed rule files of the environment.
pub async fn list_namespaces(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (_, env) = authorize(&state, &headers, Need::Read)?;
    let ns: Vec<Value> = state
        .0
        .alerting
        .namespaces(env.as_str())
        .into_iter()
        .map(|n| json!({"name": n.name, "yaml": n.yaml}))
        .collect();
    Ok(
        axum::Json(json!({"namespaces": ns, "rule_files": state.0.alerting.options().rule_files}))
            .into_response(),
    )
}

/// `PUT /api/telemetry/admin/rules/{namespace}`: a rule file in Prometheus' format (YAML body).
pub async fn put_namespace(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let (_, env) = authorize(&state, &headers, Need::Admin)?;
    if !valid_id(&name) {
        return Err(ApiError::bad_request(
            "invalid_rules",
            "namespace: 1–64 characters of A-Za-z0-9._-",
        ));
    }
    let bytes = body_bytes(body).await?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| ApiError::bad_request("invalid_rules", "body is not UTF-8"))?;
    let file = vigil_alert::RuleFile::parse(text).map_err(|e| {
        ApiError::bad_request("invalid_rules", e.to_string()).with_details(json!({"errors": e.0}))
    })?;
    state
        .0
        .alerting
        .put_namespace(env.as_str(), &name, text)
        .map_err(|e| {
            ApiError::bad_request("invalid_rules", e.join("; ")).with_details(json!({"errors": e}))
        })?;
    let (g, a, r) = file.counts();
    Ok(axum::Json(
        json!({"namespace": name, "groups": g, "alerting_rules": a, "recording_rules": r}),
    )
    .into_response())
}

/// `DELETE /api/telemetry/admin/rules/{namespace}`
pub async fn delete_namespace(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let (_, env) = authorize(&state, &headers, Need::Admin)?;
    let found = state
        .0
        .alerting
        .delete_namespace(env.as_str(), &name)
        .map_err(internal)?;
    deleted(found, || {
        format!("no rule namespace {name:?} in environment {env}")
    })
}

// ---------------------------------------------------------------------- silences

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SilenceIn {
    #[serde(default)]
    id: Option<String>,
    matchers: Vec<SilenceMatcher>,
    #[serde(rename = "startsAt", default)]
    starts_at: Option<String>,
    #[serde(rename = "endsAt")]
    ends_at: String,
    #[serde(rename = "createdBy", default)]
    created_by: Option<String>,
    #[serde(default)]
    comment: String,
}

fn silence_json(s: &Silence, now: i64) -> Value {
    json!({
        "id": s.id,
        "status": {"state": s.state(now).as_str()},
        "updatedAt": rfc3339(s.updated_at),
        "matchers": s.matchers,
        "startsAt": rfc3339(s.starts_at),
        "endsAt": rfc3339(s.ends_at),
        "createdBy": s.created_by,
        "comment": s.comment,
    })
}

/// `GET /api/telemetry/admin/silences` (Alertmanager API v2 shape).
pub async fn list_silences(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (_, env) = authorize(&state, &headers, Need::Read)?;
    let now = state.0.alerting.now();
    let mut l = state.0.alerting.silences(Some(env.as_str()));
    l.sort_by_key(|s| {
        (
            s.state(now) != vigil_alert::silence::SilenceState::Active,
            -s.updated_at,
        )
    });
    Ok(axum::Json(l.iter().map(|s| silence_json(s, now)).collect::<Vec<_>>()).into_response())
}

/// `POST /api/telemetry/admin/silences`: creates (or, with `id`, replaces) a silence.
pub async fn create_silence(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (principal, env) = authorize(&state, &headers, Need::Operate)?;
    let bytes = body_bytes(body).await?;
    let inp: SilenceIn = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request("invalid_silence", format!("not a silence: {e}")))?;
    let now = state.0.alerting.now();
    let t = |s: &str, f: &str| {
        vigil_promql::parse_time(s).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_silence",
                format!("{f}: {s:?} is not an RFC 3339 time"),
            )
        })
    };
    let starts = match &inp.starts_at {
        Some(s) => t(s, "startsAt")?.max(now),
        None => now,
    };
    let ends = t(&inp.ends_at, "endsAt")?;
    let id = match inp.id {
        Some(id) => {
            let exists = state
                .0
                .alerting
                .silences(Some(env.as_str()))
                .iter()
                .any(|s| s.id == id);
            if !exists {
                return Err(not_found(format!("no silence {id:?} in environment {env}")));
            }
            id
        }
        None => new_id(),
    };
    let s = Silence {
        id: id.clone(),
        env: env.as_str().to_string(),
        matchers: inp.matchers,
        starts_at: starts,
        ends_at: ends,
        created_by: inp
            .created_by
            .filter(|c| !c.trim().is_empty())
            .unwrap_or_else(|| principal.sub.clone()),
        comment: inp.comment,
        updated_at: now,
    };
    let errs = s.validate();
    if !errs.is_empty() {
        return Err(ApiError::bad_request("invalid_silence", errs.join("; "))
            .with_details(json!({"errors": errs})));
    }
    if s.ends_at <= now {
        return Err(ApiError::bad_request(
            "invalid_silence",
            "endsAt is in the past",
        ));
    }
    state.0.alerting.put_silence(s).map_err(internal)?;
    Ok(axum::Json(json!({"silenceID": id})).into_response())
}

/// `GET /api/telemetry/admin/silences/{id}`
pub async fn get_silence(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (_, env) = authorize(&state, &headers, Need::Read)?;
    let now = state.0.alerting.now();
    let s = state
        .0
        .alerting
        .silences(Some(env.as_str()))
        .into_iter()
        .find(|s| s.id == id)
        .ok_or_else(|| not_found(format!("no silence {id:?} in environment {env}")))?;
    Ok(axum::Json(silence_json(&s, now)).into_response())
}

/// `DELETE /api/telemetry/admin/silences/{id}`: expires it.
pub async fn expire_silence(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (_, env) = authorize(&state, &headers, Need::Operate)?;
    let found = state
        .0
        .alerting
        .expire_silence(env.as_str(), &id)
        .map_err(internal)?;
    deleted(found, || format!("no silence {id:?} in environment {env}"))
}

// ---------------------------------------------------------------------- alerts

/// Filters of the alert list.
#[derive(Deserialize)]
pub struct AlertFilter {
    state: Option<String>,
    alertname: Option<String>,
}

fn alert_json(state: &AppState, a: &Alert) -> Value {
    let (ack, mute) = state.0.alerting.dispatch_view(a);
    alert_view(a, ack, mute)
}

fn alert_view(
    a: &Alert,
    ack: Option<vigil_alert::dispatch::Ack>,
    mute: vigil_alert::dispatch::Mute,
) -> Value {
    json!({
        "fingerprint": format!("{:016x}", a.fingerprint),
        "labels": a.labels,
        "annotations": a.annotations,
        "state": a.state.as_str(),
        "value": a.value.is_finite().then_some(a.value),
        "source": a.source,
        "activeAt": rfc3339(a.active_at),
        "firedAt": a.fired_at.map(rfc3339),
        "resolvedAt": a.resolved_at.map(rfc3339),
        "acknowledgedBy": ack.as_ref().map(|k| k.by.clone()),
        "acknowledgedAt": ack.as_ref().map(|k| rfc3339(k.at)),
        "silencedBy": mute.silenced_by,
        "inhibitedBy": mute.inhibited_by,
    })
}

/// `GET /api/telemetry/admin/alerts?state=firing&alertname=X`
pub async fn list_alerts(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(f): Query<AlertFilter>,
) -> Result<Response, ApiError> {
    let (_, env) = authorize(&state, &headers, Need::Read)?;
    if let Some(s) = &f.state
        && !matches!(s.as_str(), "pending" | "firing" | "inactive")
    {
        return Err(ApiError::bad_request(
            "bad_state",
            format!("state {s:?} is not one of pending, firing, inactive"),
        ));
    }
    let selected: Vec<Alert> = state
        .0
        .alerting
        .alerts(Some(env.as_str()))
        .into_iter()
        .filter(|a| f.state.as_deref().is_none_or(|s| a.state.as_str() == s))
        .filter(|a| {
            f.alertname
                .as_deref()
                .is_none_or(|n| a.labels.get("alertname").is_some_and(|x| x == n))
        })
        .collect();
    // Silences and inhibitions for the whole list at once (not one scan per alert).
    let views = state.0.alerting.dispatch_views(&selected);
    let alerts: Vec<Value> = selected
        .iter()
        .zip(views)
        .map(|(a, (ack, mute))| alert_view(a, ack, mute))
        .collect();
    Ok(axum::Json(json!({"alerts": alerts})).into_response())
}

fn fp_param(s: &str) -> Result<u64, ApiError> {
    parse_fp(s).ok_or_else(|| {
        ApiError::bad_request(
            "bad_fingerprint",
            format!("{s:?} is not an alert fingerprint (16 hex digits)"),
        )
    })
}

/// `GET /api/telemetry/admin/alerts/{fingerprint}`
pub async fn get_alert(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(fp): Path<String>,
) -> Result<Response, ApiError> {
    let (_, env) = authorize(&state, &headers, Need::Read)?;
    let f = fp_param(&fp)?;
    let a = state
        .0
        .alerting
        .alerts(Some(env.as_str()))
        .into_iter()
        .find(|a| a.fingerprint == f)
        .ok_or_else(|| not_found(format!("no alert {fp} in environment {env}")))?;
    Ok(axum::Json(alert_json(&state, &a)).into_response())
}

/// `POST /api/telemetry/admin/alerts/{fingerprint}/ack`: acknowledges (operator role), which
/// stops escalation and repeats.
pub async fn ack_alert(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(fp): Path<String>,
) -> Result<Response, ApiError> {
    let (principal, env) = authorize(&state, &headers, Need::Operate)?;
    let f = fp_param(&fp)?;
    let exists = state
        .0
        .alerting
        .alerts(Some(env.as_str()))
        .iter()
        .any(|a| a.fingerprint == f);
    if !exists {
        return Err(not_found(format!("no alert {fp} in environment {env}")));
    }
    let a = state
        .0
        .alerting
        .ack(env.as_str(), f, &principal.sub)
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, "not_firing", e))?;
    Ok(axum::Json(alert_json(&state, &a)).into_response())
}

/// `GET /api/telemetry/admin/alert-groups`: the dispatcher's aggregation groups.
pub async fn alert_groups(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (_, env) = authorize(&state, &headers, Need::Read)?;
    let alerts: BTreeMap<u64, Alert> = state
        .0
        .alerting
        .alerts(Some(env.as_str()))
        .into_iter()
        .map(|a| (a.fingerprint, a))
        .collect();
    let groups: Vec<Value> = state
        .0
        .alerting
        .groups_view()
        .into_iter()
        .filter(|g| g.alerts.iter().any(|fp| alerts.contains_key(fp)))
        .map(|g| {
            json!({
                "key": g.key,
                "route": g.route,
                "labels": g.labels,
                "alerts": g.alerts.iter().filter(|fp| alerts.contains_key(fp)).map(|fp| format!("{fp:016x}")).collect::<Vec<_>>(),
                "nextFlush": rfc3339(g.next_flush),
                "notified": g.sent.iter().map(|(r, l)| (r.clone(), json!({"at": rfc3339(l.at), "firing": l.firing.len(), "resolved": l.resolved.len()}))).collect::<BTreeMap<_, _>>(),
                "escalation": g.escalation.iter().map(|(fp, e)| (format!("{fp:016x}"), json!({"level": e.level, "since": rfc3339(e.level_at), "notified": e.notified}))).collect::<BTreeMap<_, _>>(),
            })
        })
        .collect();
    Ok(axum::Json(json!({"groups": groups})).into_response())
}

// ---------------------------------------------------------------------- delivery log, analytics

/// Filters of the delivery log.
#[derive(Deserialize)]
pub struct LogQuery {
    state: Option<String>,
    limit: Option<usize>,
}

/// `GET /api/telemetry/admin/notifications?state=dead&limit=100`: the delivery log.
pub async fn notifications(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<LogQuery>,
) -> Result<Response, ApiError> {
    let (_, env) = authorize(&state, &headers, Need::Read)?;
    if let Some(s) = &q.state
        && !matches!(s.as_str(), "pending" | "delivered" | "dead")
    {
        return Err(ApiError::bad_request(
            "bad_state",
            format!("state {s:?} is not one of pending, delivered, dead"),
        ));
    }
    let limit = q.limit.unwrap_or(100).min(10_000);
    let meta = state.0.meta.clone();
    let st = q.state.clone();
    let rows = tokio::task::spawn_blocking(move || {
        meta.outbox_list(Some(env.as_str()), st.as_deref(), limit)
    })
    .await
    .map_err(internal)?
    .map_err(internal)?;
    let rows: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "id": r.id,
                "createdAt": rfc3339(r.created_ms),
                "receiver": r.receiver,
                "channel": r.channel,
                "target": redact_target(&r.target),
                "summary": r.summary,
                "state": r.state,
                "attempts": r.attempts,
                "nextAttemptAt": (r.state == "pending").then(|| rfc3339(r.next_attempt_ms)),
                "lastError": r.last_error,
                "deliveredAt": r.delivered_ms.map(rfc3339),
                "latencyMs": r.delivered_ms.map(|d| d - r.created_ms),
            })
        })
        .collect();
    Ok(axum::Json(json!({"notifications": rows})).into_response())
}

fn redact_target(t: &str) -> String {
    // Slack-style URLs carry their secret in the path; show the host only.
    match t.split_once("://") {
        Some((scheme, rest)) if rest.contains('/') => {
            let host = rest.split('/').next().unwrap_or(rest);
            if t.contains("hooks.slack.com") {
                format!("{scheme}://{host}/…")
            } else {
                t.to_string()
            }
        }
        _ => t.to_string(),
    }
}

/// Analytics window.
#[derive(Deserialize)]
pub struct WindowQuery {
    window: Option<String>,
}

/// `GET /api/telemetry/admin/analytics?window=24h`: per rule fired count, time to acknowledge,
/// time to resolve, flapping; noisiest rules; per receiver delivery success and latency.
pub async fn analytics(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<WindowQuery>,
) -> Result<Response, ApiError> {
    let (_, env) = authorize(&state, &headers, Need::Read)?;
    let w = q.window.as_deref().unwrap_or("24h");
    let window_ms = crate::config::parse_duration(w)
        .ok_or_else(|| {
            ApiError::bad_request(
                "bad_window",
                format!("window {w:?} is not a duration like 1h, 24h, 7d"),
            )
        })?
        .as_millis() as i64;
    if window_ms <= 0 {
        return Err(ApiError::bad_request(
            "bad_window",
            "window must be positive",
        ));
    }
    let now = state.0.alerting.now();
    let since = now - window_ms;
    let meta = state.0.meta.clone();
    let e2 = env.clone();
    let (hist, rows) = tokio::task::spawn_blocking(move || {
        Ok::<_, vigil_meta::Error>((
            meta.alert_history(Some(e2.as_str()), since)?,
            meta.outbox_list(Some(e2.as_str()), None, 100_000)?,
        ))
    })
    .await
    .map_err(internal)?
    .map_err(internal)?;
    Ok(axum::Json(compute_analytics(&hist, &rows, since, now, window_ms)).into_response())
}

#[derive(Default)]
struct RuleAgg {
    fired: u64,
    resolved: u64,
    acked: u64,
    changes: u64,
    tta: Vec<i64>,
    ttr: Vec<i64>,
}

fn mean(v: &[i64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<i64>() as f64 / v.len() as f64 / 1000.0)
}

fn median(v: &mut [i64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    Some(v[v.len() / 2] as f64 / 1000.0)
}

fn compute_analytics(
    hist: &[vigil_meta::HistoryRecord],
    rows: &[vigil_meta::OutboxRow],
    since: i64,
    now: i64,
    window_ms: i64,
) -> Value {
    let mut rules: BTreeMap<(String, String), RuleAgg> = BTreeMap::new();
    let mut fired_at: BTreeMap<String, i64> = BTreeMap::new();
    for h in hist {
        let agg = rules
            .entry((h.alertname.clone(), h.source.clone()))
            .or_default();
        match h.event.as_str() {
            "firing" => {
                agg.fired += 1;
                agg.changes += 1;
                fired_at.insert(h.fingerprint.clone(), h.at_ms);
            }
            "resolved" => {
                agg.resolved += 1;
                agg.changes += 1;
                if let Some(f) = fired_at.remove(&h.fingerprint) {
                    agg.ttr.push(h.at_ms - f);
                }
            }
            "acknowledged" => {
                agg.acked += 1;
                if let Some(f) = fired_at.get(&h.fingerprint) {
                    agg.tta.push(h.at_ms - f);
                }
            }
            _ => {}
        }
    }
    let hours = window_ms as f64 / 3_600_000.0;
    let mut rule_list: Vec<Value> = rules
        .into_iter()
        .map(|((name, source), mut a)| {
            json!({
                "alertname": name,
                "source": source,
                "fired": a.fired,
                "resolved": a.resolved,
                "acknowledged": a.acked,
                "meanTimeToAcknowledgeSeconds": mean(&a.tta),
                "medianTimeToAcknowledgeSeconds": median(&mut a.tta),
                "meanTimeToResolveSeconds": mean(&a.ttr),
                "medianTimeToResolveSeconds": median(&mut a.ttr),
                "stateChangesPerHour": a.changes as f64 / hours,
                "flapping": a.changes as f64 / hours >= 4.0,
            })
        })
        .collect();
    rule_list.sort_by(|a, b| b["fired"].as_u64().cmp(&a["fired"].as_u64()));
    let noisiest: Vec<Value> = rule_list
        .iter()
        .take(10)
        .filter(|r| r["fired"].as_u64() > Some(0))
        .cloned()
        .collect();
    // (delivered, dead, pending, delivery latencies) per (receiver, channel).
    type Tally = (u64, u64, u64, Vec<i64>);
    let mut recv: BTreeMap<(String, String), Tally> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.created_ms >= since) {
        let e = recv
            .entry((r.receiver.clone(), r.channel.clone()))
            .or_default();
        match r.state.as_str() {
            "delivered" => {
                e.0 += 1;
                if let Some(d) = r.delivered_ms {
                    e.3.push(d - r.created_ms);
                }
            }
            "dead" => e.1 += 1,
            _ => e.2 += 1,
        }
    }
    let receivers: Vec<Value> = recv
        .into_iter()
        .map(|((r, c), (ok, dead, pending, mut lat))| {
            let done = ok + dead;
            json!({
                "receiver": r,
                "channel": c,
                "delivered": ok,
                "dead": dead,
                "pending": pending,
                "successRate": (done > 0).then(|| ok as f64 / done as f64),
                "meanLatencySeconds": mean(&lat),
                "medianLatencySeconds": median(&mut lat),
            })
        })
        .collect();
    json!({
        "window": {"from": rfc3339(since), "to": rfc3339(now)},
        "rules": rule_list,
        "noisiest": noisiest,
        "receivers": receivers,
    })
}

/// `GET /api/telemetry/admin/channels`: receivers, their channels (secrets left out) and the
/// escalation policies.
pub async fn channels(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Need::Read)?;
    let c = state.0.alerting.notify_config();
    let receivers: Vec<Value> = c
        .receivers
        .iter()
        .map(|r| {
            json!({
                "name": r.name,
                "webhook": r.webhook_configs.iter().map(|w| json!({"url": w.url, "send_resolved": w.send_resolved, "format": w.format.clone().unwrap_or_else(|| "alertmanager".into())})).collect::<Vec<_>>(),
                "slack": r.slack_configs.iter().map(|s| json!({"channel": s.channel, "send_resolved": s.send_resolved})).collect::<Vec<_>>(),
                "email": r.email_configs.iter().map(|e| json!({"to": e.to, "send_resolved": e.send_resolved})).collect::<Vec<_>>(),
                "alertmanager": r.alertmanager_configs.iter().map(|a| json!({"url": a.url})).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(axum::Json(json!({"receivers": receivers, "escalation_policies": c.escalation_policies, "inhibit_rules": c.inhibit_rules.len()})).into_response())
}

/// `POST /api/telemetry/admin/reload`: re-reads rule files and the routing file (admin).
pub async fn reload(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Need::Admin)?;
    let al = state.0.alerting.clone();
    tokio::task::spawn_blocking(move || al.reload())
        .await
        .map_err(internal)?
        .map_err(|e| ApiError::bad_request("reload_failed", e))?;
    Ok(axum::Json(json!({"status": "reloaded"})).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_exponent_format() {
        assert_eq!(go_exp(1.0), "1e+00");
        assert_eq!(go_exp(95.5), "9.55e+01");
        assert_eq!(go_exp(0.00123), "1.23e-03");
        assert_eq!(go_exp(f64::NAN), "NaN");
    }

    #[test]
    fn analytics_pairs_events() {
        let h = |fp: &str, ev: &str, at: i64| vigil_meta::HistoryRecord {
            env: "p".into(),
            fingerprint: fp.into(),
            alertname: "X".into(),
            source: "s".into(),
            event: ev.into(),
            at_ms: at,
            by: None,
        };
        let hist = vec![
            h("a", "firing", 0),
            h("a", "acknowledged", 60_000),
            h("a", "resolved", 120_000),
            h("b", "firing", 10_000),
        ];
        let v = compute_analytics(&hist, &[], 0, 3_600_000, 3_600_000);
        let r = &v["rules"][0];
        assert_eq!(r["fired"], 2);
        assert_eq!(r["meanTimeToAcknowledgeSeconds"], 60.0);
        assert_eq!(r["meanTimeToResolveSeconds"], 120.0);
        assert_eq!(r["stateChangesPerHour"], 3.0);
        assert_eq!(v["noisiest"][0]["alertname"], "X");
    }
}

//! Heartbeats in, health out: `/api/telemetry/heartbeat`, `/heartbeat/batch`,
//! `/api/telemetry/health`, `/health/agents`, `/health/agents/{id}`, `/health/zones`.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use vigil_health::State as AgentState;

use crate::auth::Need;
use crate::health::{EnvFleet, FieldError, Heartbeat, parse_state};
use crate::http::error::ApiError;
use crate::http::extract::authorize;
use crate::http::state::AppState;

/// Largest heartbeat body (batch included).
const MAX_BODY: usize = 16 << 20;
/// Most heartbeats in one batch.
const MAX_BATCH: usize = 100_000;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
}

fn field_error(prefix: &str, e: FieldError) -> ApiError {
    let field = format!("{prefix}{}", e.field);
    ApiError::bad_request("invalid_heartbeat", format!("{field}: {}", e.reason))
        .with_details(json!({"field": field, "reason": e.reason}))
}

async fn body_bytes(body: Body) -> Result<axum::body::Bytes, ApiError> {
    axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("heartbeat body larger than {MAX_BODY} bytes"),
        )
    })
}

fn parse_one(v: &[u8]) -> Result<Heartbeat, ApiError> {
    serde_json::from_slice::<Heartbeat>(v)
        .map_err(|e| ApiError::bad_request("invalid_heartbeat", format!("not a heartbeat: {e}")))
}

/// `POST /api/telemetry/heartbeat`
pub async fn heartbeat(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (_, env) = authorize(&state, &headers, Need::Write)?;
    let bytes = body_bytes(body).await?;
    let hb = parse_one(&bytes)?;
    hb.validate().map_err(|e| field_error("", e))?;
    let now = now_ms();
    let fleet = state.0.fleet.env(env.as_str(), now);
    let (st, phi) = {
        let mut f = fleet.lock();
        f.heartbeat(&hb, now);
        let idx = f.index(&hb.agent_id).unwrap_or(0);
        (f.det.agent(idx).state, f.det.phi(idx, now))
    };
    state.note_env(env.as_str(), now);
    // A borrowed struct, not `json!`: no map or string copies on the hottest endpoint.
    #[derive(serde::Serialize)]
    struct Reply<'a> {
        agent_id: &'a str,
        state: &'a str,
        phi: f64,
    }
    Ok(axum::Json(Reply {
        agent_id: &hb.agent_id,
        state: st.as_str(),
        phi,
    })
    .into_response())
}

/// `POST /api/telemetry/heartbeat/batch`: a JSON array of heartbeats, or
/// `{"heartbeats": [...]}`. All are checked before any is applied.
pub async fn heartbeat_batch(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (_, env) = authorize(&state, &headers, Need::Write)?;
    let bytes = body_bytes(body).await?;
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Batch {
        List(Vec<Heartbeat>),
        Wrapped { heartbeats: Vec<Heartbeat> },
    }
    let list = match serde_json::from_slice::<Batch>(&bytes) {
        Ok(Batch::List(l)) | Ok(Batch::Wrapped { heartbeats: l }) => l,
        Err(_) => {
            // Find the first bad element for a precise message.
            let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
                ApiError::bad_request("invalid_heartbeat", format!("not JSON: {e}"))
            })?;
            let arr = v
                .as_array()
                .or_else(|| v.get("heartbeats").and_then(Value::as_array))
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_heartbeat",
                        "expected an array of heartbeats or {\"heartbeats\": [...]}",
                    )
                })?;
            for (i, item) in arr.iter().enumerate() {
                if let Err(e) = serde_json::from_value::<Heartbeat>(item.clone()) {
                    return Err(ApiError::bad_request(
                        "invalid_heartbeat",
                        format!("heartbeats[{i}]: {e}"),
                    )
                    .with_details(json!({"index": i})));
                }
            }
            return Err(ApiError::bad_request(
                "invalid_heartbeat",
                "malformed batch",
            ));
        }
    };
    if list.len() > MAX_BATCH {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "{} heartbeats in one batch; at most {MAX_BATCH}",
                list.len()
            ),
        ));
    }
    for (i, hb) in list.iter().enumerate() {
        hb.validate()
            .map_err(|e| field_error(&format!("heartbeats[{i}]."), e))?;
    }
    let now = now_ms();
    let fleet = state.0.fleet.env(env.as_str(), now);
    {
        fleet.lock().heartbeats(&list, now);
    }
    state.note_env(env.as_str(), now);
    Ok(axum::Json(json!({"accepted": list.len()})).into_response())
}

fn counts(f: &EnvFleet, filter: impl Fn(u32) -> bool) -> BTreeMap<&'static str, usize> {
    let mut m = BTreeMap::new();
    for i in f.live() {
        if filter(i) {
            *m.entry(f.det.agent(i).state.as_str()).or_insert(0) += 1;
        }
    }
    m
}

/// `GET /api/telemetry/health`
pub async fn summary(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (_, env) = authorize(&state, &headers, Need::Read)?;
    let Some(fleet) = state.0.fleet.get(env.as_str()) else {
        return Ok(axum::Json(json!({"environment": env.as_str(), "agents": 0, "states": {}, "zones": [], "partitions": []})).into_response());
    };
    let f = fleet.lock();
    let zones = zones_json(&f);
    let partitions: Vec<&str> = f
        .det
        .partitioned_groups()
        .into_iter()
        .map(|z| f.zone_name(z))
        .collect();
    Ok(axum::Json(json!({
        "environment": env.as_str(),
        "agents": f.live().count(),
        "states": counts(&f, |_| true),
        "zones": zones,
        "partitions": partitions,
    }))
    .into_response())
}

fn zones_iter(f: &EnvFleet) -> impl Iterator<Item = u32> + '_ {
    let mut seen: Vec<u32> = (0..f.det.len() as u32)
        .map(|i| f.det.agent(i).zone)
        .collect();
    seen.sort_unstable();
    seen.dedup();
    seen.into_iter()
}

fn zones_json(f: &EnvFleet) -> Vec<Value> {
    zones_iter(f)
        .map(|z| {
            let c = counts(f, |i| f.det.agent(i).zone == z);
            json!({
                "zone": f.zone_name(z),
                "agents": c.values().sum::<usize>(),
                "states": c,
                "partition_suspected": f.det.partitioned(z),
            })
        })
        .collect()
}

/// `GET /api/telemetry/health/zones`
pub async fn zones(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (_, env) = authorize(&state, &headers, Need::Read)?;
    let z = match state.0.fleet.get(env.as_str()) {
        Some(f) => zones_json(&f.lock()),
        None => Vec::new(),
    };
    Ok(axum::Json(json!({"zones": z})).into_response())
}

/// Query of `/health/agents`.
#[derive(Debug, Deserialize)]
pub struct AgentsQuery {
    state: Option<String>,
    zone: Option<String>,
    /// `name=value`.
    label: Option<String>,
    limit: Option<usize>,
    offset: Option<usize>,
}

fn agent_summary(f: &EnvFleet, i: u32, now: i64) -> Value {
    let a = f.det.agent(i);
    let info = &f.info[i as usize];
    json!({
        "agent_id": info.id,
        "zone": info.zone,
        "state": a.state.as_str(),
        "since_ms": a.since_ms,
        "last_seen_ms": info.last_seen_ms,
        "interval_ms": a.interval_ms,
        "phi": f.det.phi(i, now),
        "labels": info.labels,
        "version": info.version,
    })
}

/// `GET /api/telemetry/health/agents`
pub async fn agents(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<AgentsQuery>,
) -> Result<Response, ApiError> {
    let (_, env) = authorize(&state, &headers, Need::Read)?;
    let want_state: Option<AgentState> = match &q.state {
        None => None,
        Some(s) => Some(parse_state(s).ok_or_else(|| {
            ApiError::bad_request("bad_parameter", format!("state {s:?} is not one of unknown, healthy, degraded, suspect, failed, recovered, unreachable, maintenance"))
        })?),
    };
    let label =
        match &q.label {
            None => None,
            Some(l) => Some(l.split_once('=').ok_or_else(|| {
                ApiError::bad_request("bad_parameter", "label must be name=value")
            })?),
        };
    let limit = q.limit.unwrap_or(100).min(10_000);
    let offset = q.offset.unwrap_or(0);
    let now = now_ms();
    let (total, page) = match state.0.fleet.get(env.as_str()) {
        None => (0, Vec::new()),
        Some(f) => {
            let f = f.lock();
            let mut idx: Vec<u32> = f
                .live()
                .filter(|&i| {
                    let a = f.det.agent(i);
                    let info = &f.info[i as usize];
                    want_state.is_none_or(|s| a.state == s)
                        && q.zone.as_deref().is_none_or(|z| info.zone == z)
                        && label.is_none_or(|(k, v)| info.labels.get(k).is_some_and(|x| x == v))
                })
                .collect();
            idx.sort_by(|a, b| f.info[*a as usize].id.cmp(&f.info[*b as usize].id));
            let total = idx.len();
            let page: Vec<Value> = idx
                .into_iter()
                .skip(offset)
                .take(limit)
                .map(|i| agent_summary(&f, i, now))
                .collect();
            (total, page)
        }
    };
    Ok(
        axum::Json(json!({"total": total, "offset": offset, "limit": limit, "agents": page}))
            .into_response(),
    )
}

/// `GET /api/telemetry/health/agents/{id}`
pub async fn agent(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (_, env) = authorize(&state, &headers, Need::Read)?;
    let now = now_ms();
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no agent {id:?} in environment {:?}", env.as_str()),
        )
    };
    let fleet = state.0.fleet.get(env.as_str()).ok_or_else(not_found)?;
    let (mut v, unsaved) = {
        let f = fleet.lock();
        let i = f.index(&id).ok_or_else(not_found)?;
        let a = f.det.agent(i);
        let info = &f.info[i as usize];
        let mut v = agent_summary(&f, i, now);
        v["mean_interval_ms"] = json!(a.mean_ms);
        v["jitter_ms"] = json!(a.jitter_ms);
        v["clock_offset_ms"] = json!(a.offset_ms);
        v["loss"] = json!(a.loss());
        v["received"] = json!(a.received);
        v["lost"] = json!(a.lost);
        v["restarts"] = json!(a.restarts);
        v["first_seen_ms"] = json!(info.first_seen_ms);
        v["message"] = json!(info.message);
        v["checks"] = json!(info.checks);
        let unsaved: Vec<Value> = f
            .recent
            .iter()
            .rev()
            .filter(|e| e.agent_id == id)
            .take(20)
            .map(event_json)
            .collect();
        (v, unsaved)
    };
    let fleet_ref = state.0.fleet.clone();
    let (env_s, id_s) = (env.as_str().to_string(), id.clone());
    let stored = tokio::task::spawn_blocking(move || fleet_ref.history(&env_s, &id_s, 20))
        .await
        .map_err(internal)?
        .map_err(internal)?;
    // The in-memory events are the newest; stored ones fill in what came before.
    let mut history = unsaved;
    let newest_kept = history
        .last()
        .and_then(|e| e["at_ms"].as_i64())
        .unwrap_or(i64::MAX);
    for e in stored.iter().filter(|e| e.at_ms < newest_kept) {
        if history.len() >= 20 {
            break;
        }
        history.push(event_json(e));
    }
    v["history"] = json!(history);
    Ok(axum::Json(v).into_response())
}

fn event_json(e: &vigil_meta::AgentEventRecord) -> Value {
    json!({
        "at_ms": e.at_ms,
        "kind": e.kind,
        "from": e.from_state,
        "to": e.to_state,
        "detail": e.detail,
    })
}

/// Body of `POST /api/telemetry/health/maintenance`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceRequest {
    /// One agent.
    #[serde(default)]
    agent_id: Option<String>,
    /// A whole zone.
    #[serde(default)]
    zone: Option<String>,
    /// Agents carrying all these labels.
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// End of the window, ms since the epoch (a past time ends a window).
    #[serde(default)]
    until_ms: Option<i64>,
    /// Or its length from now, e.g. `2h`.
    #[serde(default)]
    duration: Option<String>,
}

/// `POST /api/telemetry/health/maintenance`: agents matching every given selector (an agent,
/// a zone, labels) are not judged until the window ends. Operator or admin.
pub async fn maintenance(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (_, env) = authorize(&state, &headers, Need::Operate)?;
    let bytes = body_bytes(body).await?;
    let req: MaintenanceRequest = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(
            "invalid_maintenance",
            format!("not a maintenance request: {e}"),
        )
    })?;
    if req.agent_id.is_none() && req.zone.is_none() && req.labels.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_maintenance",
            "name at least one of agent_id, zone, labels",
        )
        .with_details(json!({"field": "agent_id"})));
    }
    let now = now_ms();
    let until = match (req.until_ms, &req.duration) {
        (Some(u), None) => u,
        (None, Some(d)) => {
            let ms = crate::config::parse_duration(d).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_maintenance",
                    format!("duration {d:?} is not like 30m or 2h"),
                )
                .with_details(json!({"field": "duration"}))
            })?;
            now + ms.as_millis() as i64
        }
        _ => {
            return Err(ApiError::bad_request(
                "invalid_maintenance",
                "give exactly one of until_ms and duration",
            )
            .with_details(json!({"field": "until_ms"})));
        }
    };
    if until > now + 30 * 86_400_000 {
        return Err(ApiError::bad_request(
            "invalid_maintenance",
            "a window may last at most 30 days",
        )
        .with_details(json!({"field": "until_ms"})));
    }
    let n = match state.0.fleet.get(env.as_str()) {
        None => 0,
        Some(f) => f.lock().maintenance(
            req.agent_id.as_deref(),
            req.zone.as_deref(),
            &req.labels,
            until,
            now,
        ),
    };
    if n == 0 {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no registered agent matches",
        ));
    }
    Ok(axum::Json(json!({"agents": n, "until_ms": until})).into_response())
}

/// Query of `/api/telemetry/stream`.
#[derive(Debug, Deserialize)]
pub struct StreamQuery {
    /// Comma-separated event kinds: `state`, `partition_suspected`, `partition_ended`,
    /// `restarted` (default all).
    #[serde(rename = "type")]
    kind: Option<String>,
    /// Only this zone.
    zone: Option<String>,
}

/// `GET /api/telemetry/stream`: the caller's environment's events as Server-Sent Events
/// (`event:` is the kind, `data:` the JSON). A subscriber that falls behind gets a `lagged`
/// event with the number of events it missed.
pub async fn stream(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<StreamQuery>,
) -> Result<Response, ApiError> {
    use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
    use tokio::sync::broadcast::error::RecvError;
    let (_, env) = authorize(&state, &headers, Need::Read)?;
    const KINDS: [&str; 4] = [
        "state",
        "partition_suspected",
        "partition_ended",
        "restarted",
    ];
    let kinds: Vec<String> = match &q.kind {
        None => KINDS.iter().map(|s| s.to_string()).collect(),
        Some(list) => {
            let v: Vec<String> = list.split(',').map(|s| s.trim().to_string()).collect();
            if let Some(bad) = v.iter().find(|k| !KINDS.contains(&k.as_str())) {
                return Err(ApiError::bad_request(
                    "bad_parameter",
                    format!("type {bad:?} is not one of {}", KINDS.join(", ")),
                ));
            }
            v
        }
    };
    let rx = state.0.fleet.subscribe();
    let env = env.as_str().to_string();
    let zone = q.zone;
    let events = futures_util::stream::unfold(rx, move |mut rx| {
        let (env, kinds, zone) = (env.clone(), kinds.clone(), zone.clone());
        async move {
            loop {
                match rx.recv().await {
                    Ok(ev) => {
                        if ev.env != env
                            || !kinds.contains(&ev.record.kind)
                            || zone.as_ref().is_some_and(|z| *z != ev.zone)
                        {
                            continue;
                        }
                        let r = &ev.record;
                        let data = json!({
                            "agent_id": r.agent_id, "zone": ev.zone, "at_ms": r.at_ms,
                            "from": r.from_state, "to": r.to_state, "detail": r.detail,
                        });
                        let e = SseEvent::default()
                            .event(r.kind.clone())
                            .data(data.to_string());
                        return Some((Ok::<_, std::convert::Infallible>(e), rx));
                    }
                    Err(RecvError::Lagged(n)) => {
                        let e = SseEvent::default()
                            .event("lagged")
                            .data(json!({"missed": n}).to_string());
                        return Some((Ok(e), rx));
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        }
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// `DELETE /api/telemetry/health/agents/{id}`: deregisters an agent (operator or admin). Its
/// history stays; a later heartbeat registers it again.
pub async fn deregister(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (_, env) = authorize(&state, &headers, Need::Operate)?;
    let now = now_ms();
    let known = state
        .0
        .fleet
        .get(env.as_str())
        .is_some_and(|f| f.lock().deregister(&id, now));
    if !known {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no agent {id:?} in environment {:?}", env.as_str()),
        ));
    }
    let meta = state.0.meta.clone();
    let env_s = env.as_str().to_string();
    tokio::task::spawn_blocking(move || meta.delete_agent(&env_s, &id))
        .await
        .map_err(internal)?
        .map_err(internal)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Query of `/health/availability`.
#[derive(Debug, Deserialize)]
pub struct AvailabilityQuery {
    /// Window: `24h`, `7d`, `30d` or any duration up to 90 days (default: all three).
    window: Option<String>,
    /// One agent only.
    agent: Option<String>,
}

/// `GET /api/telemetry/health/availability`: the share of time agents were up (healthy,
/// degraded, recovered or not yet judged) versus down (failed, unreachable) over 24 h, 7 d and
/// 30 d, per environment, zone and agent. Unknown and maintenance time is not counted.
pub async fn availability(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<AvailabilityQuery>,
) -> Result<Response, ApiError> {
    let (_, env) = authorize(&state, &headers, Need::Read)?;
    let windows: Vec<(String, i64)> = match &q.window {
        None => vec![
            ("24h".into(), 86_400_000),
            ("7d".into(), 7 * 86_400_000),
            ("30d".into(), 30 * 86_400_000),
        ],
        Some(w) => {
            let d = crate::config::parse_duration(w)
                .filter(|d| !d.is_zero() && d.as_secs() <= 90 * 86_400)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "bad_parameter",
                        format!("window {w:?} is not a duration up to 90d"),
                    )
                })?;
            vec![(w.clone(), d.as_millis() as i64)]
        }
    };
    let now = now_ms();
    let fleet = state.0.fleet.clone();
    let env_s = env.as_str().to_string();
    let agent = q.agent.clone();
    let res = tokio::task::spawn_blocking(move || -> Result<Value, vigil_meta::Error> {
        fleet.flush()?;
        let mut out = serde_json::Map::new();
        for (name, ms) in windows {
            let a = fleet.availability(&env_s, now, ms)?;
            let v = match &agent {
                Some(id) => json!({"agent": a.agents.get(id).and_then(|u| u.ratio())}),
                None => json!({
                    "environment": a.total.ratio(),
                    "zones": a.zones.iter().map(|(z, u)| (z.clone(), json!(u.ratio()))).collect::<serde_json::Map<_, _>>(),
                    "agents_below_99": a.agents.iter().filter(|(_, u)| u.ratio().is_some_and(|r| r < 0.99)).count(),
                }),
            };
            out.insert(name, v);
        }
        Ok(Value::Object(out))
    })
    .await
    .map_err(internal)?
    .map_err(internal)?;
    Ok(axum::Json(json!({"environment": env.as_str(), "windows": res})).into_response())
}

/// Query of `/health/incidents`.
#[derive(Debug, Deserialize)]
pub struct IncidentsQuery {
    /// Only open (not yet recovered) incidents.
    open: Option<bool>,
    /// Most to return, newest first (default 100).
    limit: Option<usize>,
}

/// `GET /api/telemetry/health/incidents`: agent failures with time to detect and time to
/// recover (the last 10,000 since start), and their means.
pub async fn incidents(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<IncidentsQuery>,
) -> Result<Response, ApiError> {
    let (_, env) = authorize(&state, &headers, Need::Read)?;
    let limit = q.limit.unwrap_or(100).min(10_000);
    let (list, mttd, mttr, open) = match state.0.fleet.get(env.as_str()) {
        None => (Vec::new(), None, None, 0),
        Some(f) => {
            let f = f.lock();
            let all = &f.incidents;
            let mean = |v: Vec<i64>| {
                (!v.is_empty()).then(|| v.iter().sum::<i64>() as f64 / v.len() as f64)
            };
            let mttd = mean(all.iter().map(|i| i.ttd_ms).collect());
            let mttr = mean(all.iter().filter_map(|i| i.ttr_ms).collect());
            let open = all.iter().filter(|i| i.recovered_at_ms.is_none()).count();
            let list: Vec<Value> = all
                .iter()
                .rev()
                .filter(|i| !q.open.unwrap_or(false) || i.recovered_at_ms.is_none())
                .take(limit)
                .map(|i| json!(i))
                .collect();
            (list, mttd, mttr, open)
        }
    };
    Ok(axum::Json(json!({
        "environment": env.as_str(),
        "open": open,
        "mean_time_to_detect_ms": mttd,
        "mean_time_to_recover_ms": mttr,
        "incidents": list,
    }))
    .into_response())
}

//! Ingestion endpoints: one handler per protocol, each extracting, decoding with
//! `vigil-ingest`, writing to the store and mapping the outcome to the protocol's answer.
//!
//! Shared steps (in the private `ingest` function): authenticate (role may write), resolve the environment,
//! admit the request (a bounded number in flight, else 429 with `Retry-After`), read the body
//! within the size limit, decompress within the decompressed limit, decode the whole payload
//! (a malformed one is a 400 and nothing is stored), then write it as one batch.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Read;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use vigil_ingest::{Limits, Summary, influx, native, otlp, prom_text, remote_write};
use vigil_model::{Clock, SystemClock};
use vigil_tsdb::{WriteBatch, WriteOutcome};

use crate::auth::Need;
use crate::http::error::ApiError;
use crate::http::extract::authorize;
use crate::http::state::AppState;

thread_local! {
    static BUFS: RefCell<(Option<WriteBatch>, Vec<u8>)> = const { RefCell::new((None, Vec::new())) };
}

/// Which decoder to run.
#[derive(Debug, Clone, Copy)]
enum Protocol {
    RemoteWrite,
    OtlpProtobuf,
    OtlpJson,
    InfluxV1,
    InfluxV2,
    PromText,
    Native,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::RemoteWrite => "remote_write",
            Protocol::OtlpProtobuf | Protocol::OtlpJson => "otlp",
            Protocol::InfluxV1 | Protocol::InfluxV2 => "influx",
            Protocol::PromText => "prometheus_text",
            Protocol::Native => "native",
        }
    }
}

async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_big = std::error::Error::source(&e)
            .is_some_and(|s| s.to_string().contains("length limit"))
            || e.to_string().contains("length limit");
        if too_big {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("request body is over the limit of {limit} bytes"),
            )
        } else {
            ApiError::bad_request("bad_body", format!("could not read the request body: {e}"))
        }
    })
}

fn gunzip(body: &[u8], limit: usize) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::new();
    let mut d = flate2::read::GzDecoder::new(body).take(limit as u64 + 1);
    d.read_to_end(&mut out).map_err(|e| {
        ApiError::bad_request(
            "bad_payload",
            format!("body does not decompress: gzip: {e}"),
        )
    })?;
    if out.len() > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("decompressed body is over the limit of {limit} bytes"),
        ));
    }
    Ok(out)
}

fn now_ms() -> i64 {
    SystemClock.now_ms()
}

struct Decoded {
    summary: Summary,
    outcome: WriteOutcome,
    /// Agents (and zones) named in the batch, when metrics count as heartbeats.
    agents: Vec<(String, Option<String>)>,
}

fn rejection_summary(o: &WriteOutcome) -> serde_json::Value {
    json!({
        "too_old": o.rejected_too_old,
        "duplicate_timestamp": o.rejected_duplicate,
        "series_limit": o.rejected_series_limit,
    })
}

fn rejection_message(o: &WriteOutcome, batch_desc: &dyn Fn(usize) -> String) -> String {
    let first = o
        .rejected
        .first()
        .map(|r| {
            format!(
                "; first: {} at {} ({})",
                batch_desc(r.series),
                r.ts_ms,
                r.reason.as_str()
            )
        })
        .unwrap_or_default();
    format!(
        "{} of {} samples rejected (too_old={}, duplicate_timestamp={}, series_limit={}){first}",
        o.rejected_total(),
        o.accepted + o.unchanged + o.rejected_total(),
        o.rejected_too_old,
        o.rejected_duplicate,
        o.rejected_series_limit
    )
}

async fn ingest(
    state: AppState,
    headers: HeaderMap,
    query: HashMap<String, String>,
    body: Body,
    proto: Protocol,
) -> Result<Response, ApiError> {
    let (_principal, env) = authorize(&state, &headers, Need::Write)?;
    let db = state.db()?;
    let Ok(_permit) = state.0.write_slots.try_acquire() else {
        state.0.metrics.rejected(proto.name(), "overload", 1);
        return Err(ApiError {
            retry_after: Some(1),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "overloaded",
                "too many ingest requests in flight; retry after the indicated delay",
            )
        });
    };
    state
        .0
        .metrics
        .inflight_writes
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let _gauge = InflightGuard(&state);
    let raw = read_body(body, state.0.max_body_bytes).await?;
    let limits = state.0.limits.clone();
    let gzip = headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    let now = now_ms();
    let precision = match proto {
        Protocol::InfluxV1 | Protocol::InfluxV2 => {
            let p = query.get("precision").map(String::as_str).unwrap_or("");
            Some(influx::Precision::parse(p).ok_or_else(|| {
                ApiError::bad_request(
                    "bad_precision",
                    format!("precision {p:?} is not one of ns, us, ms, s"),
                )
            })?)
        }
        _ => None,
    };
    let extra: Vec<(String, String)> = match proto {
        Protocol::InfluxV1 => query
            .get("db")
            .map(|d| vec![("db".to_string(), d.clone())])
            .unwrap_or_default(),
        Protocol::InfluxV2 => query
            .get("bucket")
            .map(|b| vec![("bucket".to_string(), b.clone())])
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    let env2 = env.clone();
    let beat_label = state
        .0
        .health
        .metrics_count_in(env.as_str())
        .then(|| state.0.health.metrics_heartbeat_label.clone());
    let result = tokio::task::block_in_place(|| -> Result<(Decoded, String), ApiError> {
        BUFS.with(|cell| {
            let mut guard = cell.borrow_mut();
            let (batch_slot, scratch) = &mut *guard;
            let batch = batch_slot.get_or_insert_with(|| WriteBatch::new(env2.clone()));
            batch.clear(env2.clone());
            // remote_write: label checks only for series the store does not hold yet.
            batch.defer_label_checks(
                matches!(proto, Protocol::RemoteWrite).then_some(limits.labels),
            );
            let unzipped;
            let body: &[u8] = if gzip && !matches!(proto, Protocol::RemoteWrite) {
                unzipped = gunzip(&raw, limits.max_decompressed_bytes)?;
                &unzipped
            } else {
                &raw
            };
            let ex: Vec<(&str, &str)> = extra
                .iter()
                .map(|(a, b)| (a.as_str(), b.as_str()))
                .collect();
            let summary = match proto {
                Protocol::RemoteWrite => remote_write::decode(body, &limits, scratch, batch)?,
                Protocol::OtlpProtobuf => otlp::decode_protobuf(body, &limits, batch)?,
                Protocol::OtlpJson => otlp::decode_json(body, &limits, batch)?,
                Protocol::InfluxV1 | Protocol::InfluxV2 => influx::decode(
                    body,
                    precision.unwrap_or(influx::Precision::Ns),
                    &ex,
                    now,
                    &limits,
                    batch,
                )?,
                Protocol::PromText => prom_text::decode(body, now, &ex, &limits, batch)?,
                Protocol::Native => native::decode(body, now, &limits, batch)?,
            };
            let outcome = match db.write(batch) {
                Ok(o) => o,
                Err(vigil_tsdb::Error::InvalidLabels {
                    series_index,
                    source,
                }) => {
                    return Err(vigil_ingest::DecodeError::Labels {
                        series: series_index,
                        source,
                    }
                    .into());
                }
                Err(e) => return Err(e.into()),
            };
            // Threshold rules see the samples as they arrive.
            state.0.alerting.on_batch(batch);
            let msg = if outcome.rejected_total() > 0 {
                rejection_message(&outcome, &|i| batch.labels_of(i).to_string())
            } else {
                String::new()
            };
            // Metrics pushes as heartbeats: the distinct agents named in the batch.
            let mut agents: Vec<(String, Option<String>)> = Vec::new();
            if beat_label.is_some() {
                let label = beat_label.as_deref().unwrap_or("agent");
                let mut seen = hashbrown::HashSet::new();
                for i in 0..batch.series_len() {
                    let mut agent = None;
                    let mut zone = None;
                    for (n, v) in batch.label_pairs(i) {
                        if n == label {
                            agent = Some(v);
                        } else if n == "zone" {
                            zone = Some(v);
                        }
                    }
                    if let Some(a) = agent
                        && seen.len() < 100_000
                        && seen.insert(a.to_string())
                    {
                        agents.push((a.to_string(), zone.map(str::to_string)));
                    }
                }
            }
            Ok((
                Decoded {
                    summary,
                    outcome,
                    agents,
                },
                msg,
            ))
        })
    });
    let (d, msg) = match result {
        Ok(x) => x,
        Err(e) => {
            state.0.metrics.rejected(
                proto.name(),
                if e.status == StatusCode::PAYLOAD_TOO_LARGE {
                    "too_large"
                } else {
                    "malformed"
                },
                1,
            );
            return Err(e);
        }
    };
    state.note_env(env.as_str(), now);
    if !d.agents.is_empty() {
        let fleet = state.0.fleet.env(env.as_str(), now);
        let mut f = fleet.lock();
        for (agent, zone) in &d.agents {
            f.metrics_heartbeat(
                agent,
                zone.as_deref(),
                state.0.health.metrics_heartbeat_interval_ms,
                now,
            );
        }
        f.flush_events(now);
    }
    let m = &state.0.metrics;
    m.ingested(proto.name(), d.outcome.accepted);
    m.rejected(proto.name(), "too_old", d.outcome.rejected_too_old);
    m.rejected(
        proto.name(),
        "duplicate_timestamp",
        d.outcome.rejected_duplicate,
    );
    m.rejected(
        proto.name(),
        "series_limit",
        d.outcome.rejected_series_limit,
    );
    let o = &d.outcome;
    let rejected = o.rejected_total();
    Ok(match proto {
        Protocol::OtlpProtobuf | Protocol::OtlpJson => {
            let json = matches!(proto, Protocol::OtlpJson);
            let body = otlp::response(rejected as i64, &msg, json);
            let ct = if json {
                "application/json"
            } else {
                "application/x-protobuf"
            };
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, HeaderValue::from_static(ct))],
                body,
            )
                .into_response()
        }
        Protocol::Native => (
            StatusCode::OK,
            axum::Json(json!({
                "environment": env.as_str(),
                "series": d.summary.series,
                "accepted": o.accepted,
                "unchanged": o.unchanged,
                "rejected": rejected,
                "rejections": rejection_summary(o),
                "message": msg,
            })),
        )
            .into_response(),
        _ if rejected > 0 => {
            let prefix = if matches!(proto, Protocol::InfluxV1 | Protocol::InfluxV2) {
                "partial write: "
            } else {
                ""
            };
            ApiError::bad_request("samples_rejected", format!("{prefix}{msg}"))
                .with_details(json!({"accepted": o.accepted, "rejected": rejection_summary(o)}))
                .into_response()
        }
        _ => StatusCode::NO_CONTENT.into_response(),
    })
}

struct InflightGuard<'a>(&'a AppState);

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.0
            .0
            .metrics
            .inflight_writes
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// `POST /api/v1/write` — Prometheus remote_write 1.0.
pub async fn remote_write(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    ingest(s, headers, HashMap::new(), body, Protocol::RemoteWrite).await
}

/// `POST /v1/metrics` — OTLP/HTTP, protobuf or JSON by `Content-Type`.
pub async fn otlp_metrics(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let proto = if ct.starts_with("application/json") {
        Protocol::OtlpJson
    } else if ct.starts_with("application/x-protobuf") || ct.is_empty() {
        Protocol::OtlpProtobuf
    } else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("Content-Type {ct:?}: send application/x-protobuf or application/json"),
        ));
    };
    ingest(s, headers, HashMap::new(), body, proto).await
}

/// `POST /write` — Influx v1 line protocol (`db`, `precision`).
pub async fn influx_v1(
    State(s): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    body: Body,
) -> Result<Response, ApiError> {
    ingest(s, headers, q, body, Protocol::InfluxV1).await
}

/// `POST /api/v2/write` — Influx v2 line protocol (`org`, `bucket`, `precision`).
pub async fn influx_v2(
    State(s): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    body: Body,
) -> Result<Response, ApiError> {
    ingest(s, headers, q, body, Protocol::InfluxV2).await
}

/// `POST /api/v1/import/prometheus` — Prometheus text exposition format.
pub async fn prom_import(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    ingest(s, headers, HashMap::new(), body, Protocol::PromText).await
}

/// `POST /api/telemetry/ingest` — Vigil's native JSON snapshot.
pub async fn native_ingest(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    ingest(s, headers, HashMap::new(), body, Protocol::Native).await
}

/// Limits for decoders built from the configuration.
pub fn limits_from(cfg: &crate::config::LimitsConfig, labels: vigil_model::LabelLimits) -> Limits {
    Limits {
        max_decompressed_bytes: cfg.max_decompressed_bytes,
        max_samples_per_request: cfg.max_samples_per_request,
        labels,
    }
}

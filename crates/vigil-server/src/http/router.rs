//! The whole `Router`, built in one function.

use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::json;

use crate::auth::Need;
use crate::http::error::ApiError;
use crate::http::extract::authorize;
use crate::http::state::AppState;
use crate::http::{alerting, health, ingest, openapi, prom};

/// Builds the router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/openapi.json", get(openapi::openapi))
        .route("/api/docs", get(openapi::docs))
        .route("/api/v1/write", post(ingest::remote_write))
        .route("/v1/metrics", post(ingest::otlp_metrics))
        .route("/write", post(ingest::influx_v1))
        .route("/api/v2/write", post(ingest::influx_v2))
        .route("/api/v1/import/prometheus", post(ingest::prom_import))
        .route("/api/telemetry/ingest", post(ingest::native_ingest))
        .route("/api/telemetry/heartbeat", post(health::heartbeat))
        .route(
            "/api/telemetry/heartbeat/batch",
            post(health::heartbeat_batch),
        )
        .route("/api/telemetry/health", get(health::summary))
        .route("/api/telemetry/health/zones", get(health::zones))
        .route("/api/telemetry/health/incidents", get(health::incidents))
        .route(
            "/api/telemetry/health/availability",
            get(health::availability),
        )
        .route(
            "/api/telemetry/health/maintenance",
            post(health::maintenance),
        )
        .route("/api/telemetry/stream", get(health::stream))
        .route("/api/telemetry/health/agents", get(health::agents))
        .route(
            "/api/telemetry/health/agents/{id}",
            get(health::agent).delete(health::deregister),
        )
        .route("/api/v1/query", get(prom::query).post(prom::query))
        .route(
            "/api/v1/query_range",
            get(prom::query_range).post(prom::query_range),
        )
        .route("/api/v1/series", get(prom::series).post(prom::series))
        .route("/api/v1/labels", get(prom::labels).post(prom::labels))
        .route("/api/v1/label/{name}/values", get(prom::label_values))
        .route("/api/v1/metadata", get(prom::metadata))
        .route(
            "/api/v1/query_exemplars",
            get(prom::exemplars).post(prom::exemplars),
        )
        .route(
            "/api/telemetry/admin/thresholds",
            get(alerting::list_thresholds)
                .post(alerting::create_threshold)
                .put(alerting::replace_thresholds),
        )
        .route(
            "/api/telemetry/admin/thresholds/{id}",
            get(alerting::get_threshold)
                .put(alerting::put_threshold)
                .delete(alerting::delete_threshold),
        )
        .route("/api/telemetry/admin/rules", get(alerting::list_namespaces))
        .route(
            "/api/telemetry/admin/rules/{namespace}",
            put(alerting::put_namespace).delete(alerting::delete_namespace),
        )
        .route(
            "/api/telemetry/admin/silences",
            get(alerting::list_silences).post(alerting::create_silence),
        )
        .route(
            "/api/telemetry/admin/silences/{id}",
            get(alerting::get_silence).delete(alerting::expire_silence),
        )
        .route("/api/telemetry/admin/alerts", get(alerting::list_alerts))
        .route(
            "/api/telemetry/admin/alerts/{fingerprint}",
            get(alerting::get_alert),
        )
        .route(
            "/api/telemetry/admin/alerts/{fingerprint}/ack",
            post(alerting::ack_alert),
        )
        .route(
            "/api/telemetry/admin/alert-groups",
            get(alerting::alert_groups),
        )
        .route(
            "/api/telemetry/admin/notifications",
            get(alerting::notifications),
        )
        .route("/api/telemetry/admin/analytics", get(alerting::analytics))
        .route("/api/telemetry/admin/channels", get(alerting::channels))
        .route("/api/telemetry/admin/reload", post(alerting::reload))
        .route("/api/v1/rules", get(prom::rules))
        .route("/api/v1/alerts", get(prom::alerts))
        .route("/api/v1/status/buildinfo", get(prom::buildinfo))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), track))
        // Bodies are read with our own limit inside the handlers (JSON errors); this only
        // lifts axum's 2 MB default so it does not answer first.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    // MatchedPath is a shared string: cloning it does not allocate.
    let route = req.extensions().get::<MatchedPath>().cloned();
    let t = Instant::now();
    let resp = next.run(req).await;
    state.0.metrics.request(
        route.as_ref().map_or("unmatched", |m| m.as_str()),
        resp.status().as_u16(),
        t.elapsed(),
    );
    resp
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; see /api/openapi.json or /api/docs",
    )
}

async fn healthz() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.0.db.get().is_some() {
        axum::Json(json!({"status": "ready"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "starting", "reason": "WAL replay in progress"})),
        )
            .into_response()
    }
}

async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&state, &headers, Need::Read)?;
    let stats = state.0.db.get().map(|db| db.stats());
    let mut body = state.0.metrics.render(stats.as_ref());
    state.0.alerting.render_metrics(&mut body);
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response())
}

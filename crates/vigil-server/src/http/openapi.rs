//! The OpenAPI 3 document of every route (`GET /api/openapi.json`) and a plain HTML page
//! generated from it (`GET /api/docs`, no JavaScript, works offline).

use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// (method, path, summary, roles, query parameters, request body content type)
type Op = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static [&'static str],
    Option<&'static str>,
);

const OPS: &[Op] = &[
    ("get", "/healthz", "Liveness", "none", &[], None),
    (
        "get",
        "/readyz",
        "Readiness: 200 once WAL replay is done, else 503",
        "none",
        &[],
        None,
    ),
    (
        "get",
        "/metrics",
        "Vigil's own metrics, Prometheus text format",
        "viewer, operator, admin",
        &[],
        None,
    ),
    (
        "post",
        "/api/v1/write",
        "Prometheus remote_write 1.0 (snappy protobuf); 204",
        "agent, operator, admin",
        &[],
        Some("application/x-protobuf"),
    ),
    (
        "post",
        "/v1/metrics",
        "OTLP/HTTP metrics, protobuf or JSON",
        "agent, operator, admin",
        &[],
        Some("application/x-protobuf"),
    ),
    (
        "post",
        "/write",
        "Influx line protocol v1; 204",
        "agent, operator, admin",
        &["db", "precision"],
        Some("text/plain"),
    ),
    (
        "post",
        "/api/v2/write",
        "Influx line protocol v2; 204",
        "agent, operator, admin",
        &["org", "bucket", "precision"],
        Some("text/plain"),
    ),
    (
        "post",
        "/api/v1/import/prometheus",
        "Prometheus text exposition; 204",
        "agent, operator, admin",
        &[],
        Some("text/plain"),
    ),
    (
        "post",
        "/api/telemetry/ingest",
        "Native JSON metrics snapshot",
        "agent, operator, admin",
        &[],
        Some("application/json"),
    ),
    (
        "post",
        "/api/telemetry/heartbeat",
        "One heartbeat; answers the agent's state and phi",
        "agent, operator, admin",
        &[],
        Some("application/json"),
    ),
    (
        "post",
        "/api/telemetry/heartbeat/batch",
        "Many heartbeats (array or {\"heartbeats\": [...]}); all checked before any is applied",
        "agent, operator, admin",
        &[],
        Some("application/json"),
    ),
    (
        "get",
        "/api/telemetry/health",
        "Environment summary: agents per state and zone, suspected partitions",
        "viewer, operator, admin",
        &[],
        None,
    ),
    (
        "get",
        "/api/telemetry/health/zones",
        "Zones with their agents per state",
        "viewer, operator, admin",
        &[],
        None,
    ),
    (
        "get",
        "/api/telemetry/health/incidents",
        "Agent failures with time to detect and time to recover, and their means",
        "viewer, operator, admin",
        &["open", "limit"],
        None,
    ),
    (
        "get",
        "/api/telemetry/health/availability",
        "Availability over 24 h / 7 d / 30 d (or `window`) per environment and zone, or one `agent`",
        "viewer, operator, admin",
        &["window", "agent"],
        None,
    ),
    (
        "post",
        "/api/telemetry/health/maintenance",
        "Maintenance window for agents matching agent_id, zone and/or labels",
        "operator, admin",
        &[],
        Some("application/json"),
    ),
    (
        "get",
        "/api/telemetry/health/agents",
        "Agents, filtered and paginated",
        "viewer, operator, admin",
        &["state", "zone", "label", "limit", "offset"],
        None,
    ),
    (
        "get",
        "/api/telemetry/health/agents/{id}",
        "One agent: state, phi, interval statistics, loss, jitter, clock offset, checks, history",
        "viewer, operator, admin",
        &[],
        None,
    ),
    (
        "delete",
        "/api/telemetry/health/agents/{id}",
        "Deregister an agent; 204",
        "operator, admin",
        &[],
        None,
    ),
    (
        "get",
        "/api/telemetry/stream",
        "Live events (Server-Sent Events)",
        "viewer, operator, admin",
        &["type", "zone"],
        None,
    ),
    (
        "get",
        "/api/v1/query",
        "PromQL instant query",
        "viewer, operator, admin",
        &["query", "time", "timeout"],
        None,
    ),
    (
        "post",
        "/api/v1/query",
        "PromQL instant query (form)",
        "viewer, operator, admin",
        &[],
        Some("application/x-www-form-urlencoded"),
    ),
    (
        "get",
        "/api/v1/query_range",
        "PromQL range query",
        "viewer, operator, admin",
        &["query", "start", "end", "step"],
        None,
    ),
    (
        "post",
        "/api/v1/query_range",
        "PromQL range query (form)",
        "viewer, operator, admin",
        &[],
        Some("application/x-www-form-urlencoded"),
    ),
    (
        "get",
        "/api/v1/series",
        "Series matching selectors",
        "viewer, operator, admin",
        &["match[]", "start", "end", "limit"],
        None,
    ),
    (
        "post",
        "/api/v1/series",
        "Series matching selectors (form)",
        "viewer, operator, admin",
        &[],
        Some("application/x-www-form-urlencoded"),
    ),
    (
        "get",
        "/api/v1/labels",
        "Label names",
        "viewer, operator, admin",
        &["match[]", "start", "end", "limit"],
        None,
    ),
    (
        "post",
        "/api/v1/labels",
        "Label names (form)",
        "viewer, operator, admin",
        &[],
        Some("application/x-www-form-urlencoded"),
    ),
    (
        "get",
        "/api/v1/label/{name}/values",
        "Values of a label",
        "viewer, operator, admin",
        &["match[]", "start", "end", "limit"],
        None,
    ),
    (
        "get",
        "/api/v1/metadata",
        "Metric metadata (none kept yet: empty)",
        "viewer, operator, admin",
        &[],
        None,
    ),
    (
        "get",
        "/api/v1/query_exemplars",
        "Exemplars (none kept: empty)",
        "viewer, operator, admin",
        &["query", "start", "end"],
        None,
    ),
    (
        "post",
        "/api/v1/query_exemplars",
        "Exemplars (form)",
        "viewer, operator, admin",
        &[],
        Some("application/x-www-form-urlencoded"),
    ),
    (
        "get",
        "/api/v1/rules",
        "Rule groups in Prometheus' shape: rule files, then vigil-thresholds and vigil-health",
        "viewer, operator, admin",
        &["type", "exclude_alerts"],
        None,
    ),
    (
        "get",
        "/api/v1/alerts",
        "Pending and firing alerts of the environment, in Prometheus' shape",
        "viewer, operator, admin",
        &[],
        None,
    ),
    (
        "get",
        "/api/v1/status/buildinfo",
        "Build information in Prometheus' shape",
        "viewer, operator, admin",
        &[],
        None,
    ),
    (
        "get",
        "/api/telemetry/admin/thresholds",
        "Threshold rules of the environment",
        "viewer, operator, admin",
        &[],
        None,
    ),
    (
        "post",
        "/api/telemetry/admin/thresholds",
        "Create a threshold rule (evaluated on ingest); 201, 409 if the id exists",
        "operator, admin",
        &[],
        Some("application/json"),
    ),
    (
        "put",
        "/api/telemetry/admin/thresholds",
        "Replace every threshold rule of the environment: {\"thresholds\": [...]}, all or nothing",
        "operator, admin",
        &[],
        Some("application/json"),
    ),
    (
        "get",
        "/api/telemetry/admin/thresholds/{id}",
        "One threshold rule",
        "viewer, operator, admin",
        &[],
        None,
    ),
    (
        "put",
        "/api/telemetry/admin/thresholds/{id}",
        "Create or replace a threshold rule",
        "operator, admin",
        &[],
        Some("application/json"),
    ),
    (
        "delete",
        "/api/telemetry/admin/thresholds/{id}",
        "Delete a threshold rule; its alerts resolve",
        "operator, admin",
        &[],
        None,
    ),
    (
        "get",
        "/api/telemetry/admin/rules",
        "API-managed rule namespaces and the configured rule files",
        "viewer, operator, admin",
        &[],
        None,
    ),
    (
        "put",
        "/api/telemetry/admin/rules/{namespace}",
        "Create or replace a rule namespace: a Prometheus rule file (YAML), validated like promtool",
        "admin",
        &[],
        Some("application/yaml"),
    ),
    (
        "delete",
        "/api/telemetry/admin/rules/{namespace}",
        "Delete a rule namespace",
        "admin",
        &[],
        None,
    ),
    (
        "get",
        "/api/telemetry/admin/silences",
        "Silences (Alertmanager API v2 shape)",
        "viewer, operator, admin",
        &[],
        None,
    ),
    (
        "post",
        "/api/telemetry/admin/silences",
        "Create a silence, or replace one when `id` is given",
        "operator, admin",
        &[],
        Some("application/json"),
    ),
    (
        "get",
        "/api/telemetry/admin/silences/{id}",
        "One silence",
        "viewer, operator, admin",
        &[],
        None,
    ),
    (
        "delete",
        "/api/telemetry/admin/silences/{id}",
        "Expire a silence now",
        "operator, admin",
        &[],
        None,
    ),
    (
        "get",
        "/api/telemetry/admin/alerts",
        "Alerts with fingerprint, acknowledgement, silences and inhibitions",
        "viewer, operator, admin",
        &["state", "alertname"],
        None,
    ),
    (
        "get",
        "/api/telemetry/admin/alerts/{fingerprint}",
        "One alert",
        "viewer, operator, admin",
        &[],
        None,
    ),
    (
        "post",
        "/api/telemetry/admin/alerts/{fingerprint}/ack",
        "Acknowledge a firing alert (stops escalation and repeats); 409 if not firing",
        "operator, admin",
        &[],
        None,
    ),
    (
        "get",
        "/api/telemetry/admin/alert-groups",
        "Aggregation groups: members, next flush, what each receiver was told, escalation levels",
        "viewer, operator, admin",
        &[],
        None,
    ),
    (
        "get",
        "/api/telemetry/admin/notifications",
        "Delivery log: queued, delivered and dead-lettered notifications with attempts and errors",
        "viewer, operator, admin",
        &["state", "limit"],
        None,
    ),
    (
        "get",
        "/api/telemetry/admin/analytics",
        "Per rule fired count, time to acknowledge and resolve, flapping, noisiest rules; per receiver delivery success",
        "viewer, operator, admin",
        &["window"],
        None,
    ),
    (
        "get",
        "/api/telemetry/admin/channels",
        "Receivers and channels (no secrets), escalation policies",
        "viewer, operator, admin",
        &[],
        None,
    ),
    (
        "post",
        "/api/telemetry/admin/reload",
        "Re-read rule files and the routing file",
        "admin",
        &[],
        None,
    ),
    (
        "get",
        "/api/openapi.json",
        "This document",
        "none",
        &[],
        None,
    ),
    (
        "get",
        "/api/docs",
        "Human-readable API page",
        "none",
        &[],
        None,
    ),
];

/// The document.
pub fn document() -> Value {
    let mut paths = serde_json::Map::new();
    for &(method, path, summary, roles, params, body) in OPS {
        let mut parameters: Vec<Value> = params
            .iter()
            .map(|p| json!({"name": p, "in": "query", "required": *p == "query", "schema": {"type": "string"}}))
            .collect();
        for seg in path.split('/') {
            if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                parameters.push(json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}));
            }
        }
        if path.starts_with("/api/")
            || path == "/metrics"
            || path.starts_with("/v1")
            || path == "/write"
        {
            parameters.push(json!({"name": "X-Scope-OrgID", "in": "header", "required": false, "schema": {"type": "string"}, "description": "Environment; else the token's default, else `default`"}));
        }
        let mut op = json!({
            "summary": summary,
            "description": format!("Roles: {roles}."),
            "parameters": parameters,
            "responses": {
                "200": {"description": "Success"},
                "400": {"description": "Bad input: the JSON error names what is wrong"},
                "401": {"description": "Missing, invalid, expired or revoked token"},
                "403": {"description": "Wrong role or environment"},
            },
        });
        if roles != "none" {
            op["security"] = json!([{"bearer": []}]);
        }
        if let Some(ct) = body {
            op["requestBody"] = json!({"required": true, "content": {ct: {"schema": {}}}});
        }
        let entry = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        entry[method] = op;
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Vigil",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Telemetry and health monitoring: ingestion, PromQL (Prometheus API), heartbeats and failure detection. Errors are {\"error\": {\"code\", \"message\", \"details\"}}; the Prometheus API answers in its own {\"status\": \"error\", ...} shape.",
        },
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}},
        "paths": paths,
    })
}

/// `GET /api/openapi.json`
pub async fn openapi() -> Response {
    axum::Json(document()).into_response()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// `GET /api/docs`
pub async fn docs() -> Response {
    let mut html = String::from(
        "<!doctype html><meta charset=utf-8><title>Vigil API</title>\
         <style>body{font:14px system-ui;margin:2em;max-width:70em}td,th{padding:.3em .6em;text-align:left;vertical-align:top}\
         tr:nth-child(even){background:#f4f4f4}code{font-size:13px}</style>\
         <h1>Vigil API</h1><p>Machine-readable: <a href=\"/api/openapi.json\">/api/openapi.json</a>. \
         Send <code>Authorization: Bearer &lt;token&gt;</code> and, for an environment, <code>X-Scope-OrgID</code>.</p>\
         <table><tr><th>method</th><th>path</th><th>what</th><th>roles</th><th>parameters</th></tr>",
    );
    for &(method, path, summary, roles, params, _) in OPS {
        html.push_str(&format!(
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            method.to_uppercase(),
            esc(path),
            esc(summary),
            esc(roles),
            esc(&params.join(", "))
        ));
    }
    html.push_str("</table>");
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_documented_once_per_method() {
        let doc = document();
        let router_src = include_str!("router.rs");
        let mut routes = 0;
        for line in router_src.lines() {
            if let Some(start) = line.find("\"/") {
                let rest = &line[start + 1..];
                let path = &rest[..rest.find('"').unwrap()];
                routes += 1;
                assert!(
                    doc["paths"].get(path).is_some(),
                    "{path} is not in the OpenAPI document"
                );
            }
        }
        assert!(routes > 20, "found only {routes} routes");
        let mut seen = std::collections::HashSet::new();
        for &(m, p, ..) in OPS {
            assert!(seen.insert((m, p)), "{m} {p} twice");
        }
    }
}

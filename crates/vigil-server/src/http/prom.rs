//! The Prometheus HTTP API (`/api/v1/query`, `query_range`, `series`, `labels`, label values,
//! metadata, buildinfo, exemplars, rules, alerts) in Prometheus' own response shapes, GET and
//! form-encoded POST, scoped to the caller's environment.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use vigil_model::{EnvId, Labels, Matcher};
use vigil_promql::{
    Error as QError, SHORT_VALUE_MAX, Value, decimal_into, parse_duration, parse_time, push_value,
    short_value,
};

use crate::auth::Need;
use crate::http::error::ApiError;
use crate::http::extract::authorize;
use crate::http::state::AppState;

/// Largest form body accepted on the query endpoints.
const MAX_FORM_BYTES: usize = 1 << 20;
/// Bounds used when a request gives no start or end (Prometheus' min/max time, in ms).
const MIN_TIME: i64 = -9_223_372_036_854_775 / 2;
const MAX_TIME: i64 = 9_223_372_036_854_775 / 2;

/// An error in Prometheus' shape: `{"status":"error","errorType":..,"error":..}`.
#[derive(Debug)]
pub struct PromError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl PromError {
    fn bad_data(msg: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "bad_data",
            message: msg.into(),
        }
    }
}

impl From<ApiError> for PromError {
    fn from(e: ApiError) -> Self {
        Self {
            status: e.status,
            kind: e.code,
            message: e.message,
        }
    }
}

impl From<QError> for PromError {
    fn from(e: QError) -> Self {
        let status = match &e {
            QError::Parse(_) | QError::BadData(_) => StatusCode::BAD_REQUEST,
            QError::Execution(_) | QError::TooManySamples(_) => StatusCode::UNPROCESSABLE_ENTITY,
            QError::Timeout(_) | QError::TooManyQueries(_) => StatusCode::SERVICE_UNAVAILABLE,
            QError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self {
            status,
            kind: e.error_type(),
            message: e.to_string(),
        }
    }
}

impl IntoResponse for PromError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(kind = self.kind, message = %self.message, "Query failed.");
        }
        let body = serde_json::json!({
            "status": "error",
            "errorType": self.kind,
            "error": self.message,
        });
        let mut r = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        r
    }
}

/// Request parameters from the query string and, for form POSTs, the body.
struct Params(Vec<(String, String)>);

impl Params {
    async fn read(
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<Self, PromError> {
        let mut v: Vec<(String, String)> = uri
            .query()
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        if method == Method::POST {
            let is_form = headers
                .get(header::CONTENT_TYPE)
                .and_then(|c| c.to_str().ok())
                .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
            let bytes: Bytes = axum::body::to_bytes(body, MAX_FORM_BYTES)
                .await
                .map_err(|_| {
                    PromError::bad_data(format!("form body larger than {MAX_FORM_BYTES} bytes"))
                })?;
            if is_form {
                v.extend(form_urlencoded::parse(&bytes).into_owned());
            } else if !bytes.is_empty() {
                return Err(PromError {
                    status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    kind: "bad_data",
                    message: "POST bodies must be application/x-www-form-urlencoded".into(),
                });
            }
        }
        Ok(Self(v))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn time(&self, name: &str, default: i64) -> Result<i64, PromError> {
        match self.get(name) {
            None | Some("") => Ok(default),
            Some(s) => parse_time(s).ok_or_else(|| {
                PromError::bad_data(format!(
                    "invalid parameter \"{name}\": cannot parse \"{s}\" to a valid timestamp"
                ))
            }),
        }
    }

    fn limit(&self) -> Result<Option<usize>, PromError> {
        match self.get("limit") {
            None | Some("") | Some("0") => Ok(None),
            Some(s) => s.parse::<usize>().map(Some).map_err(|_| {
                PromError::bad_data(format!("invalid parameter \"limit\": cannot parse \"{s}\""))
            }),
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Appends `s` as a JSON string. Label text seldom needs escaping: runs of plain bytes are
/// copied whole, not char by char.
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    let mut rest = s;
    // Every byte that needs escaping is ASCII, so cutting around one keeps valid UTF-8.
    while let Some(i) = rest
        .bytes()
        .position(|b| b == b'"' || b == b'\\' || b < 0x20)
    {
        out.push_str(&rest[..i]);
        match rest.as_bytes()[i] {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            c => {
                let _ = write!(out, "\\u{c:04x}");
            }
        }
        rest = &rest[i + 1..];
    }
    out.push_str(rest);
    out.push('"');
}

fn push_labels(out: &mut String, l: &Labels) {
    out.push('{');
    for (i, lab) in l.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_str(out, &lab.name);
        out.push(':');
        push_json_str(out, &lab.value);
    }
    out.push('}');
}

/// Sample times below this many milliseconds (10¹⁸) are written with integer arithmetic.
const EXACT_MS: u64 = 1_000_000_000_000_000;

/// The most bytes [`point_into`] writes: `[`, a time, `,"`, a value, `"]`.
const POINT_MAX: usize = 1 + 24 + 2 + SHORT_VALUE_MAX + 2;

/// Writes the usual point, `[<t in seconds>,"<v>"]` for a time below [`EXACT_MS`] and a
/// [`short_value`], at the start of `b` (at least [`POINT_MAX`] bytes) and returns its
/// length; `None` (and `b` unspecified) for any other point.
fn point_into(b: &mut [u8], t: i64, v: f64) -> Option<usize> {
    if t.unsigned_abs() >= EXACT_MS {
        return None;
    }
    b[0] = b'[';
    let mut n = 1 + seconds_into(&mut b[1..], t);
    b[n..n + 2].copy_from_slice(b",\"");
    n += 2;
    let vb = <&mut [u8; SHORT_VALUE_MAX]>::try_from(&mut b[n..n + SHORT_VALUE_MAX]).ok()?;
    n += short_value(v, vb)?;
    b[n..n + 2].copy_from_slice(b"\"]");
    Some(n + 2)
}

/// Appends text the writers above assembled as bytes (ASCII by construction).
fn push_ascii(out: &mut String, b: &[u8]) {
    out.push_str(std::str::from_utf8(b).unwrap_or_default());
}

/// Appends `[<t in seconds>,"<v>"]`.
fn push_point(out: &mut String, t: i64, v: f64) {
    let mut b = [0u8; POINT_MAX];
    if let Some(n) = point_into(&mut b, t, v) {
        push_ascii(out, &b[..n]);
        return;
    }
    out.push('[');
    push_seconds(out, t);
    out.push_str(",\"");
    push_value(out, v);
    out.push_str("\"]");
}

/// Appends `points` as [`push_point`]s separated by commas. Points are written into a stack
/// buffer and appended a few kilobytes at a time, so a point costs no copy or UTF-8 check
/// of its own (a day of one-minute points is 1,440 of them).
fn push_points(out: &mut String, points: &[(i64, f64)]) {
    let mut b = [0u8; 4096];
    let mut n = 0;
    for (j, &(t, v)) in points.iter().enumerate() {
        if n + 1 + POINT_MAX > b.len() {
            push_ascii(out, &b[..n]);
            n = 0;
        }
        if j > 0 {
            b[n] = b',';
            n += 1;
        }
        match point_into(&mut b[n..], t, v) {
            Some(len) => n += len,
            None => {
                push_ascii(out, &b[..n]);
                n = 0;
                push_point(out, t, v);
            }
        }
    }
    push_ascii(out, &b[..n]);
}

/// Writes `t_ms / 1000` as [`push_seconds`] does into `b` (at least 24 bytes) for
/// `|t_ms|` below [`EXACT_MS`], returning the length: the milliseconds as a decimal with
/// their trailing zeros dropped.
fn seconds_into(b: &mut [u8], t_ms: i64) -> usize {
    let ms = t_ms.unsigned_abs();
    let frac = ms % 1000;
    let (m, k) = if frac == 0 {
        (ms / 1000, 0)
    } else if frac.is_multiple_of(100) {
        (ms / 100, 1)
    } else if frac.is_multiple_of(10) {
        (ms / 10, 2)
    } else {
        (ms, 3)
    };
    decimal_into(b, t_ms < 0, m, k)
}

/// Appends `t_ms / 1000` as Prometheus writes a sample time (the shortest decimal form of the
/// float: `1700000000`, `1700000000.5`), with integer arithmetic where that form is exact.
fn push_seconds(out: &mut String, t_ms: i64) {
    if t_ms.unsigned_abs() >= EXACT_MS {
        let _ = write!(out, "{}", t_ms as f64 / 1000.0);
        return;
    }
    let mut b = [0u8; 24];
    let n = seconds_into(&mut b, t_ms);
    push_ascii(out, &b[..n]);
}

/// `{"status":"success","data":<data>}` from pre-rendered JSON.
fn success(data: String, warnings: &[String]) -> Response {
    let mut out = begin_success(data.len());
    out.push_str(&data);
    finish_success(out, warnings, &[])
}

/// The start of a success body, `{"status":"success","data":`, with room for `data_len`
/// more bytes: the data is rendered straight after it, never copied.
fn begin_success(data_len: usize) -> String {
    let mut out = String::with_capacity(data_len + 64);
    out.push_str("{\"status\":\"success\",\"data\":");
    out
}

/// Ends a body made by [`begin_success`] and then its data: a query's warnings and infos
/// (`"infos":[…]`, Prometheus 3; both lists left out when empty), and the closing brace.
fn finish_success(mut out: String, warnings: &[String], infos: &[String]) -> Response {
    for (key, list) in [("warnings", warnings), ("infos", infos)] {
        if list.is_empty() {
            continue;
        }
        out.push_str(",\"");
        out.push_str(key);
        out.push_str("\":[");
        for (i, w) in list.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_json_str(&mut out, w);
        }
        out.push(']');
    }
    out.push('}');
    ([(header::CONTENT_TYPE, "application/json")], out).into_response()
}

/// Renders a query result as Prometheus' `data` object onto `out`.
fn render_value_into(out: &mut String, v: &Value, t: i64) {
    match v {
        Value::Scalar(x) => {
            out.push_str("{\"resultType\":\"scalar\",\"result\":");
            push_point(out, t, *x);
        }
        Value::String(s) => {
            out.push_str("{\"resultType\":\"string\",\"result\":[");
            let _ = write!(out, "{},", t as f64 / 1000.0);
            push_json_str(out, s);
            out.push(']');
        }
        Value::Vector(vec) => {
            out.push_str("{\"resultType\":\"vector\",\"result\":[");
            for (i, s) in vec.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str("{\"metric\":");
                push_labels(out, &s.metric);
                out.push_str(",\"value\":");
                push_point(out, t, s.v);
                out.push('}');
            }
            out.push(']');
        }
        Value::Matrix(m) => render_matrix_into(out, m),
    }
    out.push('}');
}

/// About how many bytes [`render_value_into`] writes for `v` (a point is ~30 bytes: a
/// timestamp and a quoted value), so a body is allocated once instead of grown by copying.
fn rendered_len(v: &Value) -> usize {
    let labels = |l: &Labels| {
        l.iter()
            .map(|x| x.name.len() + x.value.len() + 6)
            .sum::<usize>()
    };
    64 + match v {
        Value::Scalar(_) | Value::String(_) => 64,
        Value::Vector(vec) => vec.iter().map(|s| labels(&s.metric) + 64).sum(),
        Value::Matrix(m) => m
            .iter()
            .map(|s| labels(&s.metric) + 32 + s.points.len() * 32)
            .sum(),
    }
}

fn render_matrix_into(out: &mut String, m: &vigil_promql::Matrix) {
    out.push_str("{\"resultType\":\"matrix\",\"result\":[");
    for (i, s) in m.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"metric\":");
        push_labels(out, &s.metric);
        out.push_str(",\"values\":[");
        push_points(out, &s.points);
        out.push_str("]}");
    }
    out.push(']');
}

fn auth(state: &AppState, headers: &HeaderMap) -> Result<EnvId, PromError> {
    Ok(authorize(state, headers, Need::Read)?.1)
}

fn query_param(p: &Params) -> Result<String, PromError> {
    match p.get("query") {
        Some(q) if !q.trim().is_empty() => Ok(q.to_string()),
        _ => Err(PromError::bad_data(
            "invalid parameter \"query\": query is empty",
        )),
    }
}

/// `GET|POST /api/v1/query`
pub async fn query(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, PromError> {
    let env = auth(&state, &headers)?;
    let p = Params::read(&method, &uri, &headers, body).await?;
    let q = query_param(&p)?;
    let t = p.time("time", now_ms())?;
    let db = state.db()?;
    let engine = state.0.engine.clone();
    let (value, notes) = evaluate(move || {
        let st = vigil_promql::storage::TsdbStorage::new(&db, env.as_str());
        engine.instant_annotated(&st, &q, t)
    })
    .await??;
    let mut out = begin_success(rendered_len(&value));
    render_value_into(&mut out, &value, t);
    Ok(finish_success(out, &notes.warnings, &notes.infos))
}

/// `GET|POST /api/v1/query_range`
pub async fn query_range(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, PromError> {
    let env = auth(&state, &headers)?;
    let p = Params::read(&method, &uri, &headers, body).await?;
    let q = query_param(&p)?;
    let need = |name: &str| -> Result<i64, PromError> {
        match p.get(name) {
            None | Some("") => Err(PromError::bad_data(format!(
                "invalid parameter \"{name}\": missing"
            ))),
            Some(_) => p.time(name, 0),
        }
    };
    let start = need("start")?;
    let end = need("end")?;
    let step = match p.get("step") {
        None | Some("") => return Err(PromError::bad_data("invalid parameter \"step\": missing")),
        Some(s) => parse_duration(s).ok_or_else(|| {
            PromError::bad_data(format!(
                "invalid parameter \"step\": cannot parse \"{s}\" to a valid duration"
            ))
        })?,
    };
    if end < start {
        return Err(PromError::bad_data(
            "end timestamp must not be before start time",
        ));
    }
    if step <= 0 {
        return Err(PromError::bad_data(
            "zero or negative query resolution step widths are not accepted. Try a positive integer",
        ));
    }
    let db = state.db()?;
    let engine = state.0.engine.clone();
    let (m, notes) = evaluate(move || {
        let st = vigil_promql::storage::TsdbStorage::new(&db, env.as_str());
        engine.range_annotated(&st, &q, start, end, step)
    })
    .await??;
    let value = Value::Matrix(m);
    let mut out = begin_success(rendered_len(&value));
    render_value_into(&mut out, &value, 0);
    Ok(finish_success(out, &notes.warnings, &notes.infos))
}

/// Runs a query evaluation so that it cannot starve the async workers. While no other
/// evaluation is doing so, it runs right here on this worker (most queries take well under a
/// millisecond, and handing the worker's core to another thread costs a good part of
/// that); the runtime's other workers carry on serving meanwhile, so at most one worker is
/// ever busy with a query. Any evaluation that finds that slot taken gives up this worker's
/// core for its duration (`block_in_place`), and a runtime with a single worker or a
/// current-thread runtime always evaluates off its workers. A panic in the evaluation is an
/// error, not a dropped connection.
async fn evaluate<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, PromError> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::runtime::{Handle, RuntimeFlavor};
    /// Set while an evaluation runs inline on a worker.
    static INLINE: AtomicBool = AtomicBool::new(false);
    struct Release;
    impl Drop for Release {
        fn drop(&mut self) {
            INLINE.store(false, Ordering::Release);
        }
    }
    fn run<T>(f: impl FnOnce() -> T) -> Result<T, PromError> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
            .map_err(|_| PromError::from(QError::Execution("query evaluation panicked".into())))
    }
    let handle = Handle::current();
    if handle.runtime_flavor() != RuntimeFlavor::MultiThread {
        return tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| PromError::from(QError::Storage(e.to_string())));
    }
    if handle.metrics().num_workers() > 1
        && INLINE
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    {
        let _release = Release;
        return run(f);
    }
    tokio::task::block_in_place(|| run(f))
}

/// Parses each `match[]` selector into store matchers.
fn match_sets(p: &Params) -> Result<Vec<Vec<Matcher>>, PromError> {
    let mut out = Vec::new();
    for m in p.all("match[]") {
        let e = vigil_promql::parse(m)
            .map_err(|e| PromError::bad_data(format!("invalid parameter \"match[]\": {e}")))?;
        let vs = match e {
            vigil_promql::Expr::VectorSelector(vs) => vs,
            _ => {
                return Err(PromError::bad_data(format!(
                    "invalid parameter \"match[]\": {m:?} is not a series selector"
                )));
            }
        };
        let ms = vigil_promql::selector_matchers(&vs).map_err(PromError::from)?;
        if ms.iter().all(|m| m.matches_empty()) {
            return Err(PromError::bad_data(format!(
                "invalid parameter \"match[]\": {m:?} must contain at least one non-empty matcher"
            )));
        }
        out.push(ms);
    }
    Ok(out)
}

/// `GET|POST /api/v1/series`
pub async fn series(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, PromError> {
    let env = auth(&state, &headers)?;
    let p = Params::read(&method, &uri, &headers, body).await?;
    let sets = match_sets(&p)?;
    if sets.is_empty() {
        return Err(PromError::bad_data("no match[] parameter provided"));
    }
    let start = p.time("start", MIN_TIME)?;
    let end = p.time("end", MAX_TIME)?;
    let limit = p.limit()?;
    let db = state.db()?;
    let (labels, truncated) = tokio::task::spawn_blocking(move || {
        let q = db.querier(env.as_str(), start, end);
        let mut all: std::collections::BTreeSet<Labels> = std::collections::BTreeSet::new();
        for ms in &sets {
            for s in q.select(ms)? {
                all.insert(s.labels);
            }
        }
        let n = all.len();
        let mut v: Vec<Labels> = all.into_iter().collect();
        if let Some(l) = limit {
            v.truncate(l);
        }
        Ok::<_, vigil_tsdb::Error>((v, limit.is_some_and(|l| n > l)))
    })
    .await
    .map_err(|e| PromError::from(QError::Storage(e.to_string())))?
    .map_err(|e| PromError::from(QError::Storage(e.to_string())))?;
    let mut out = String::from("[");
    for (i, l) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_labels(&mut out, l);
    }
    out.push(']');
    let warn = truncated.then(|| "results truncated due to limit".to_string());
    Ok(success(out, warn.as_slice()))
}

fn string_list(v: &[String], limit: Option<usize>) -> (String, Vec<String>) {
    let mut out = String::from("[");
    let n = limit.map_or(v.len(), |l| l.min(v.len()));
    for (i, s) in v[..n].iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_str(&mut out, s);
    }
    out.push(']');
    let warn = if n < v.len() {
        vec!["results truncated due to limit".to_string()]
    } else {
        Vec::new()
    };
    (out, warn)
}

/// Label names, or the values of one label, over the selected series (all series without
/// `match[]`), sorted and deduplicated, with the `limit` applied.
async fn label_strings(
    state: AppState,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
    name: Option<String>,
) -> Result<Response, PromError> {
    let env = auth(&state, &headers)?;
    let p = Params::read(&method, &uri, &headers, body).await?;
    if name.as_deref().is_some_and(str::is_empty) {
        return Err(PromError::bad_data("invalid label name: \"\""));
    }
    let sets = match_sets(&p)?;
    let start = p.time("start", MIN_TIME)?;
    let end = p.time("end", MAX_TIME)?;
    let limit = p.limit()?;
    let db = state.db()?;
    let found = tokio::task::spawn_blocking(move || {
        let q = db.querier(env.as_str(), start, end);
        let read = |ms: &[vigil_model::Matcher]| match &name {
            None => q.label_names(ms),
            Some(n) => q.label_values(n, ms),
        };
        let mut all = std::collections::BTreeSet::new();
        if sets.is_empty() {
            all.extend(read(&[]));
        } else {
            for ms in &sets {
                all.extend(read(ms));
            }
        }
        all.into_iter().collect::<Vec<String>>()
    })
    .await
    .map_err(|e| PromError::from(QError::Storage(e.to_string())))?;
    let (out, warn) = string_list(&found, limit);
    Ok(success(out, &warn))
}

/// `GET|POST /api/v1/labels`
pub async fn labels(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, PromError> {
    label_strings(state, method, uri, headers, body, None).await
}

/// `GET /api/v1/label/<name>/values`
pub async fn label_values(
    State(state): State<AppState>,
    Path(name): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, PromError> {
    label_strings(state, method, uri, headers, body, Some(name)).await
}

/// `GET /api/v1/metadata`: Vigil keeps no metric metadata yet, so the map is empty.
pub async fn metadata(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, PromError> {
    auth(&state, &headers)?;
    Ok(success("{}".into(), &[]))
}

/// `GET|POST /api/v1/query_exemplars`: Vigil stores no exemplars.
pub async fn exemplars(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, PromError> {
    auth(&state, &headers)?;
    Ok(success("[]".into(), &[]))
}

/// `GET /api/v1/rules`: rule-file groups, then Vigil's threshold and health rules
/// (`type=alert|record`, `exclude_alerts=true` as in Prometheus).
pub async fn rules(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, PromError> {
    let env = auth(&state, &headers)?;
    let mut kind = None;
    let mut exclude = false;
    for (k, v) in form_urlencoded::parse(q.as_deref().unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "type" => match v.as_ref() {
                "alert" | "record" => kind = Some(v.into_owned()),
                other => {
                    return Err(PromError::bad_data(format!(
                        "invalid parameter \"type\": {other:?} is not alert or record"
                    )));
                }
            },
            "exclude_alerts" => exclude = v == "true",
            _ => {}
        }
    }
    let data = crate::http::alerting::rules_data(&state, env.as_str(), kind.as_deref(), exclude);
    Ok(success(data.to_string(), &[]))
}

/// `GET /api/v1/alerts`: pending and firing alerts of the environment.
pub async fn alerts(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, PromError> {
    let env = auth(&state, &headers)?;
    let data = crate::http::alerting::alerts_data(&state, env.as_str());
    Ok(success(data.to_string(), &[]))
}

/// `GET /api/v1/status/buildinfo`: Prometheus' fields; `features` is left out on purpose
/// (Grafana would then expect a Mimir ruler API).
pub async fn buildinfo(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, PromError> {
    auth(&state, &headers)?;
    let data = serde_json::json!({
        "version": "3.0.0",
        "revision": concat!("vigil-", env!("CARGO_PKG_VERSION")),
        "branch": "vigil",
        "buildUser": "vigil",
        "buildDate": "",
        "goVersion": "none (Vigil is written in Rust)",
    });
    Ok(success(data.to_string(), &[]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The float path the fast one replaces: Prometheus' `float64(t) / 1000`, shortest form.
    fn seconds_via_float(t: i64) -> String {
        format!("{}", t as f64 / 1000.0)
    }

    #[test]
    fn json_strings_read_back_as_written() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let alphabet = [
            'a', 'Z', '0', '"', '\\', '\n', '\r', '\t', '\u{1}', '\u{1f}', ' ', 'é', '€', '😀', '/',
        ];
        let mut out = String::new();
        for len in 0..2000 {
            let s: String = (0..len % 40)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    alphabet[(x % alphabet.len() as u64) as usize]
                })
                .collect();
            out.clear();
            push_json_str(&mut out, &s);
            let back: String = serde_json::from_str(&out).unwrap();
            assert_eq!(back, s, "{out}");
        }
        out.clear();
        push_json_str(&mut out, "a\"b\\c\u{7}");
        assert_eq!(out, r#""a\"b\\c\u0007""#);
    }

    #[test]
    fn sample_times_are_written_as_the_float_would_be() {
        let mut out = String::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut check = |t: i64| {
            out.clear();
            push_seconds(&mut out, t);
            assert_eq!(out, seconds_via_float(t), "t = {t} ms");
        };
        for t in [
            0,
            1,
            -1,
            10,
            100,
            999,
            1000,
            -1500,
            1_700_000_000_000,
            1_700_000_000_120,
            1_700_000_000_007,
            999_999_999_999_999,
            -999_999_999_999_999,
            1_000_000_000_000_000,
            i64::MAX,
            i64::MIN,
        ] {
            check(t);
        }
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Millisecond times of every magnitude, both signs.
            let t = (x >> (x % 50)) as i64 * if x & 1 == 0 { 1 } else { -1 };
            check(t);
        }
    }

    /// However many evaluations run at once, they never hold every worker: with one running
    /// inline (here blocked until the end), a second is handed off the worker it started on,
    /// so a plain async task still gets to run and unblock it. If both ran inline on the
    /// two workers, the async task could not run and the second would time out.
    #[test]
    fn evaluations_leave_a_worker_for_async_tasks() {
        use std::sync::mpsc;
        use std::time::Duration;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (release_a, a_waits) = mpsc::channel::<()>();
            let (a_started, started) = tokio::sync::oneshot::channel::<()>();
            let a = tokio::spawn(evaluate(move || {
                let _ = a_started.send(());
                a_waits.recv_timeout(Duration::from_secs(30)).is_ok()
            }));
            started.await.unwrap();
            let (release_b, b_waits) = mpsc::channel::<()>();
            let b = tokio::spawn(evaluate(move || {
                b_waits.recv_timeout(Duration::from_secs(30)).is_ok()
            }));
            let c = tokio::spawn(async move {
                tokio::task::yield_now().await;
                release_b.send(()).unwrap();
            });
            c.await.unwrap();
            assert!(
                b.await.unwrap().unwrap(),
                "the second evaluation was never released"
            );
            release_a.send(()).unwrap();
            assert!(a.await.unwrap().unwrap());
        });
    }

    /// A panicking evaluation is an error, and does not keep the inline slot.
    #[test]
    fn a_panicking_evaluation_is_an_error() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        rt.block_on(async {
            for _ in 0..3 {
                let r = evaluate(|| -> u8 { panic!("boom") }).await;
                assert!(r.is_err());
            }
            assert_eq!(evaluate(|| 7).await.ok(), Some(7));
        });
    }

    /// A point assembled on the stack reads exactly as one written piece by piece.
    #[test]
    fn points_read_as_their_time_and_value_written_apart() {
        let mut x: u64 = 0x853c_49e6_748f_ea9b;
        let (mut fast, mut slow) = (String::new(), String::new());
        for i in 0..100_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let t = (x >> (x % 50)) as i64 * if x & 2 == 0 { 1 } else { -1 };
            let v = match i % 3 {
                0 => (x % 10_000_000) as f64 / 1000.0,
                1 => f64::from_bits(x.rotate_left(17)),
                _ => (x % 100_000) as f64 - 50_000.0,
            };
            fast.clear();
            push_point(&mut fast, t, v);
            slow.clear();
            slow.push('[');
            push_seconds(&mut slow, t);
            slow.push_str(",\"");
            push_value(&mut slow, v);
            slow.push_str("\"]");
            assert_eq!(fast, slow, "t = {t}, v = {v:e}");
        }
        fast.clear();
        push_point(&mut fast, 1_700_000_000_500, 0.25);
        assert_eq!(fast, r#"[1700000000.5,"0.25"]"#);
    }

    /// A series' points written through the batching buffer read exactly as the points
    /// written one by one and joined with commas, across buffer flushes and with points
    /// outside the fast path (huge times, long values) in between.
    #[test]
    fn batched_points_read_as_points_written_one_by_one() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in [0usize, 1, 2, 150, 151, 1_440, 5_000] {
            let points: Vec<(i64, f64)> = (0..len)
                .map(|i| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let t = match i % 97 {
                        0 => i64::MAX - (x % 1000) as i64,
                        _ => 1_700_000_000_000 + i as i64 * 60_000 + (x % 3) as i64 * 250,
                    };
                    let v = match i % 5 {
                        0 => f64::from_bits(x),
                        1 => 0.1 + 0.2,
                        _ => (x % 1_000_000) as f64 / 100.0,
                    };
                    (t, v)
                })
                .collect();
            let mut batched = String::from("prefix");
            push_points(&mut batched, &points);
            let mut single = String::from("prefix");
            for (j, &(t, v)) in points.iter().enumerate() {
                if j > 0 {
                    single.push(',');
                }
                push_point(&mut single, t, v);
            }
            assert_eq!(batched, single, "{len} points");
        }
    }

    #[test]
    fn sample_values_are_written_as_prometheus_formats_them() {
        let mut out = String::new();
        for (v, want) in [
            (f64::NAN, "NaN"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (0.0, "0"),
            (-0.0, "-0"),
            (5.0, "5"),
            (-42.0, "-42"),
            (0.1, "0.1"),
            (1e15, "1000000000000000"),
            (1e21, "1000000000000000000000"),
            (1.5e16, "15000000000000000"),
            (1e-7, "0.0000001"),
            (0.000123, "0.000123"),
            (123456789.125, "123456789.125"),
        ] {
            out.clear();
            push_value(&mut out, v);
            assert_eq!(out, want);
        }
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Any bit pattern, whole numbers of every size, and gauge-like decimals.
            let decimals = (x >> 20) as f64 / 10f64.powi((x % 19) as i32);
            for v in [
                f64::from_bits(x),
                (x >> (x % 64)) as f64,
                -((x >> 20) as f64),
                decimals,
                -decimals,
            ] {
                if v.is_nan() || v.is_infinite() {
                    continue;
                }
                out.clear();
                push_value(&mut out, v);
                let want = format!("{v}");
                if out == want {
                    continue;
                }
                // A value exactly halfway between two shortest forms may end in either digit
                // (`…797.2` or `…797.3` for `…797.25`); both read back as the same float.
                assert!(
                    out.parse::<f64>().map(f64::to_bits) == Ok(v.to_bits())
                        && out.len() == want.len()
                        && !out.contains('e'),
                    "bits {:#x}: {out} vs {want}",
                    v.to_bits()
                );
            }
        }
    }
}

//! OTLP/HTTP metrics (`POST /v1/metrics`), protobuf or JSON, translated the way Prometheus
//! translates OTLP:
//!
//! - metric names: `.` and other invalid characters become `_`; unit suffixes are added
//!   (`s` → `_seconds`, `By` → `_bytes`, `1` on gauges → `_ratio`, `{…}` annotations dropped,
//!   `a/b` → `_a_per_b`); monotonic sums get `_total`;
//! - resource attributes: `service.name` (prefixed by `service.namespace/` when present) →
//!   `job`, `service.instance.id` → `instance`; the other resource attributes go to one
//!   `target_info` series per resource, as in Prometheus;
//! - data point attributes become labels (invalid characters → `_`, a leading digit gets `key_`);
//! - gauges → one series; cumulative sums → counter (monotonic) or gauge; explicit-bucket
//!   histograms → `_bucket{le}` (cumulative), `_sum`, `_count`; summaries → `{quantile}`, `_sum`,
//!   `_count`; a point flagged "no recorded value" becomes a staleness marker;
//! - **delta temporality is refused** with the metric named (Vigil stores cumulative series,
//!   and converting deltas needs per-stream state the sender is better placed to keep);
//!   exponential histograms are skipped and counted (no native histograms yet).

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    self as om_point, AggregationTemporality, metric, number_data_point,
};
use prost::Message;
use vigil_tsdb::WriteBatch;

use crate::{DecodeError, Limits, Summary};

/// Decodes a protobuf `ExportMetricsServiceRequest`.
pub fn decode_protobuf(
    body: &[u8],
    limits: &Limits,
    batch: &mut WriteBatch,
) -> Result<Summary, DecodeError> {
    let req = ExportMetricsServiceRequest::decode(body).map_err(|e| DecodeError::Protobuf {
        series: 0,
        reason: e.to_string(),
    })?;
    translate(&req, limits, batch)
}

/// Decodes the JSON encoding of `ExportMetricsServiceRequest`.
pub fn decode_json(
    body: &[u8],
    limits: &Limits,
    batch: &mut WriteBatch,
) -> Result<Summary, DecodeError> {
    let req: ExportMetricsServiceRequest =
        serde_json::from_slice(body).map_err(|e| DecodeError::Json(e.to_string()))?;
    translate(&req, limits, batch)
}

fn sanitize_label(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert_str(0, "key_");
    }
    if out.is_empty() {
        out.push('_');
    }
    out
}

fn unit_word(u: &str) -> Option<&'static str> {
    Some(match u {
        "d" => "days",
        "h" => "hours",
        "min" => "minutes",
        "s" => "seconds",
        "ms" => "milliseconds",
        "us" => "microseconds",
        "ns" => "nanoseconds",
        "By" => "bytes",
        "KiBy" => "kibibytes",
        "MiBy" => "mebibytes",
        "GiBy" => "gibibytes",
        "TiBy" => "tibibytes",
        "KBy" => "kilobytes",
        "MBy" => "megabytes",
        "GBy" => "gigabytes",
        "TBy" => "terabytes",
        "m" => "meters",
        "V" => "volts",
        "A" => "amperes",
        "J" => "joules",
        "W" => "watts",
        "g" => "grams",
        "Cel" => "celsius",
        "Hz" => "hertz",
        "%" => "percent",
        _ => return None,
    })
}

/// Prometheus-style metric name for an OTLP metric: sanitised, with the unit's suffix and
/// `_total` for monotonic counters (`ratio` for a gauge of unit `1`).
pub fn metric_name(name: &str, unit: &str, counter: bool, gauge: bool) -> String {
    let mut n: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if n.starts_with(|c: char| c.is_ascii_digit()) {
        n.insert(0, '_');
    }
    // Drop `{annotations}` from the unit.
    let mut u = String::new();
    let mut depth = 0usize;
    for c in unit.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            c if depth == 0 => u.push(c),
            _ => {}
        }
    }
    let u = u.trim();
    let mut suffix = String::new();
    if u == "1" {
        if gauge {
            suffix.push_str("ratio");
        }
    } else if let Some((a, b)) = u.split_once('/') {
        let a = unit_word(a).map_or_else(|| sanitize_label(a), str::to_string);
        let b = unit_word(b).map_or_else(|| sanitize_label(b), str::to_string);
        if !a.is_empty() && a != "_" {
            suffix.push_str(&a);
            suffix.push('_');
        }
        suffix.push_str("per_");
        suffix.push_str(&b);
    } else if !u.is_empty() {
        suffix = unit_word(u).map_or_else(|| sanitize_label(u), str::to_string);
    }
    if !suffix.is_empty() && !n.ends_with(&format!("_{suffix}")) {
        n.push('_');
        n.push_str(&suffix);
    }
    if counter && !n.ends_with("_total") {
        n.push_str("_total");
    }
    n
}

fn any_to_string(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BytesValue(b)) => b.iter().map(|x| format!("{x:02x}")).collect(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a KeyValue> {
    attrs.iter().find(|kv| kv.key == key)
}

struct Out<'a> {
    batch: &'a mut WriteBatch,
    limits: &'a Limits,
    sum: Summary,
}

impl Out<'_> {
    fn emit(
        &mut self,
        name: &str,
        base: &[(String, String)],
        extra: &[(&str, String)],
        ts: i64,
        v: f64,
        what: &str,
    ) -> Result<(), DecodeError> {
        self.batch.push_label("__name__", name);
        for (k, val) in base {
            if !extra.iter().any(|e| e.0 == k) {
                self.batch.push_label(k, val);
            }
        }
        for (k, val) in extra {
            self.batch.push_label(k, val);
        }
        self.batch.push_sample(ts, v);
        let idx = self.sum.series;
        self.batch
            .finish_series(&self.limits.labels)
            .map_err(|e| DecodeError::Field {
                series: idx,
                field: "attributes",
                reason: format!("{what}: {e}"),
            })?;
        self.sum.series += 1;
        self.limits.check_expansion(self.batch)?;
        self.sum.samples += 1;
        self.limits.check_samples(self.sum.samples)?;
        Ok(())
    }
}

impl Out<'_> {
    /// Emits the `_sum` (when present) and `_count` series of a histogram or summary point.
    #[allow(clippy::too_many_arguments)]
    fn sum_count(
        &mut self,
        name: &str,
        labels: &[(String, String)],
        t: i64,
        flags: u32,
        sum: Option<f64>,
        count: u64,
        metric: &str,
    ) -> Result<(), DecodeError> {
        if let Some(sum) = sum {
            self.emit(
                &format!("{name}_sum"),
                labels,
                &[],
                t,
                value_or_stale(flags, sum),
                metric,
            )?;
        }
        self.emit(
            &format!("{name}_count"),
            labels,
            &[],
            t,
            value_or_stale(flags, count as f64),
            metric,
        )
    }

    /// Emits gauge or sum points; returns the newest point time (ns).
    fn numbers(
        &mut self,
        name: &str,
        base: &[(String, String)],
        points: &[om_point::NumberDataPoint],
        metric: &str,
    ) -> Result<u64, DecodeError> {
        let mut newest = 0;
        for p in points {
            let v = match p.value {
                Some(number_data_point::Value::AsDouble(d)) => d,
                Some(number_data_point::Value::AsInt(i)) => i as f64,
                None => continue,
            };
            newest = newest.max(p.time_unix_nano);
            self.emit(
                name,
                &point_labels(base, &p.attributes),
                &[],
                ts_ms(p.time_unix_nano),
                value_or_stale(p.flags, v),
                metric,
            )?;
        }
        Ok(newest)
    }
}

fn point_labels(resource: &[(String, String)], attrs: &[KeyValue]) -> Vec<(String, String)> {
    let mut v = resource.to_vec();
    for kv in attrs {
        let k = sanitize_label(&kv.key);
        let val = any_to_string(&kv.value);
        if let Some(e) = v.iter_mut().find(|e| e.0 == k) {
            e.1 = val;
        } else {
            v.push((k, val));
        }
    }
    v
}

fn ts_ms(nanos: u64) -> i64 {
    (nanos / 1_000_000) as i64
}

const NO_RECORDED_VALUE: u32 = 1;

fn value_or_stale(flags: u32, v: f64) -> f64 {
    if flags & NO_RECORDED_VALUE != 0 {
        vigil_model::stale_marker()
    } else {
        v
    }
}

/// Translates a decoded request.
pub fn translate(
    req: &ExportMetricsServiceRequest,
    limits: &Limits,
    batch: &mut WriteBatch,
) -> Result<Summary, DecodeError> {
    let mut out = Out {
        batch,
        limits,
        sum: Summary::default(),
    };
    for rm in &req.resource_metrics {
        let rattrs: &[KeyValue] = rm.resource.as_ref().map_or(&[], |r| &r.attributes);
        let mut base: Vec<(String, String)> = Vec::new();
        let svc = attr(rattrs, "service.name").map(|kv| any_to_string(&kv.value));
        let ns = attr(rattrs, "service.namespace").map(|kv| any_to_string(&kv.value));
        if let Some(svc) = &svc {
            let job = match &ns {
                Some(ns) if !ns.is_empty() => format!("{ns}/{svc}"),
                _ => svc.clone(),
            };
            base.push(("job".into(), job));
        }
        if let Some(inst) = attr(rattrs, "service.instance.id") {
            base.push(("instance".into(), any_to_string(&inst.value)));
        }
        let mut newest = 0u64;
        for sm in &rm.scope_metrics {
            for m in &sm.metrics {
                let Some(data) = &m.data else { continue };
                match data {
                    metric::Data::Gauge(g) => {
                        let name = metric_name(&m.name, &m.unit, false, true);
                        newest = newest.max(out.numbers(&name, &base, &g.data_points, &m.name)?);
                    }
                    metric::Data::Sum(s) => {
                        if s.aggregation_temporality == AggregationTemporality::Delta as i32 {
                            return Err(DecodeError::Unsupported(format!(
                                "metric {:?} is a sum with delta temporality; configure the exporter for cumulative temporality",
                                m.name
                            )));
                        }
                        let name = metric_name(&m.name, &m.unit, s.is_monotonic, !s.is_monotonic);
                        newest = newest.max(out.numbers(&name, &base, &s.data_points, &m.name)?);
                    }
                    metric::Data::Histogram(h) => {
                        if h.aggregation_temporality == AggregationTemporality::Delta as i32 {
                            return Err(DecodeError::Unsupported(format!(
                                "metric {:?} is a histogram with delta temporality; configure the exporter for cumulative temporality",
                                m.name
                            )));
                        }
                        let name = metric_name(&m.name, &m.unit, false, false);
                        for p in &h.data_points {
                            if !p.bucket_counts.is_empty()
                                && p.bucket_counts.len() != p.explicit_bounds.len() + 1
                            {
                                return Err(DecodeError::Field {
                                    series: out.sum.series,
                                    field: "bucket_counts",
                                    reason: format!(
                                        "metric {:?}: {} bucket counts for {} bounds",
                                        m.name,
                                        p.bucket_counts.len(),
                                        p.explicit_bounds.len()
                                    ),
                                });
                            }
                            newest = newest.max(p.time_unix_nano);
                            let labels = point_labels(&base, &p.attributes);
                            let t = ts_ms(p.time_unix_nano);
                            let mut cum = 0u64;
                            for (i, c) in p.bucket_counts.iter().enumerate() {
                                cum = cum.saturating_add(*c);
                                let le = match p.explicit_bounds.get(i) {
                                    Some(b) => format_le(*b),
                                    None => "+Inf".to_string(),
                                };
                                out.emit(
                                    &format!("{name}_bucket"),
                                    &labels,
                                    &[("le", le)],
                                    t,
                                    value_or_stale(p.flags, cum as f64),
                                    &m.name,
                                )?;
                            }
                            if p.bucket_counts.is_empty() {
                                out.emit(
                                    &format!("{name}_bucket"),
                                    &labels,
                                    &[("le", "+Inf".into())],
                                    t,
                                    value_or_stale(p.flags, p.count as f64),
                                    &m.name,
                                )?;
                            }
                            out.sum_count(&name, &labels, t, p.flags, p.sum, p.count, &m.name)?;
                        }
                    }
                    metric::Data::Summary(s) => {
                        let name = metric_name(&m.name, &m.unit, false, false);
                        for p in &s.data_points {
                            newest = newest.max(p.time_unix_nano);
                            let labels = point_labels(&base, &p.attributes);
                            let t = ts_ms(p.time_unix_nano);
                            for q in &p.quantile_values {
                                out.emit(
                                    &name,
                                    &labels,
                                    &[("quantile", format_le(q.quantile))],
                                    t,
                                    value_or_stale(p.flags, q.value),
                                    &m.name,
                                )?;
                            }
                            out.sum_count(
                                &name,
                                &labels,
                                t,
                                p.flags,
                                Some(p.sum),
                                p.count,
                                &m.name,
                            )?;
                        }
                    }
                    metric::Data::ExponentialHistogram(h) => {
                        out.sum.histograms_skipped += h.data_points.len()
                    }
                }
            }
        }
        // Other resource attributes, as Prometheus does, on `target_info`.
        let rest: Vec<(String, String)> = rattrs
            .iter()
            .filter(|kv| {
                !matches!(
                    kv.key.as_str(),
                    "service.name" | "service.namespace" | "service.instance.id"
                )
            })
            .map(|kv| (sanitize_label(&kv.key), any_to_string(&kv.value)))
            .collect();
        if !rest.is_empty() && newest > 0 && !base.is_empty() {
            let mut labels = base.clone();
            labels.extend(rest);
            out.emit("target_info", &labels, &[], ts_ms(newest), 1.0, "resource")?;
        }
    }
    Ok(out.sum)
}

fn format_le(b: f64) -> String {
    if b == f64::INFINITY {
        "+Inf".into()
    } else if b == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        // Prometheus formats bucket bounds with Go's %g-like shortest representation.
        let s = format!("{b}");
        s
    }
}

/// The body of a successful export: an `ExportMetricsServiceResponse`, with `partial_success`
/// when some data points were refused, encoded as the request was (JSON or protobuf).
pub fn response(rejected_points: i64, message: &str, json: bool) -> Vec<u8> {
    use opentelemetry_proto::tonic::collector::metrics::v1::{
        ExportMetricsPartialSuccess, ExportMetricsServiceResponse,
    };
    let resp = ExportMetricsServiceResponse {
        partial_success: (rejected_points > 0).then(|| ExportMetricsPartialSuccess {
            rejected_data_points: rejected_points,
            error_message: message.to_string(),
        }),
    };
    if json {
        serde_json::to_vec(&resp).unwrap_or_else(|_| b"{}".to_vec())
    } else {
        resp.encode_to_vec()
    }
}

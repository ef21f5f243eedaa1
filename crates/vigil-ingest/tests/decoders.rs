//! Each decoder against payloads from real encoders (prost for protobuf, serde for JSON,
//! hand-written text as the specs show it), a malformed-input corpus, and property tests that
//! no input panics a decoder.

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1 as om;
use opentelemetry_proto::tonic::resource::v1::Resource;
use proptest::prelude::*;
use prost::Message;
use vigil_ingest::{DecodeError, Limits, influx, native, otlp, prom_text, remote_write};
use vigil_model::EnvId;
use vigil_tsdb::WriteBatch;

fn batch() -> WriteBatch {
    WriteBatch::new(EnvId::new("prod").unwrap())
}

/// All series of a batch as `name{labels}` strings with their samples.
fn dump(b: &WriteBatch) -> Vec<(String, Vec<(i64, f64)>)> {
    (0..b.series_len())
        .map(|i| (b.labels_of(i).to_string(), b.samples_of(i).to_vec()))
        .collect()
}

// ---- remote_write: the real message shapes, encoded by prost --------------------------------

use remote_write::proto::{Label as PLabel, Sample as PSample, TimeSeries, WriteRequest};

fn ts(labels: &[(&str, &str)], samples: &[(i64, f64)]) -> TimeSeries {
    TimeSeries::new(labels, samples)
}

fn snappy(b: &[u8]) -> Vec<u8> {
    snap::raw::Encoder::new().compress_vec(b).unwrap()
}

#[test]
fn remote_write_decodes_series_samples_and_staleness() {
    let req = WriteRequest {
        timeseries: vec![
            ts(
                &[("__name__", "up"), ("job", "node"), ("instance", "a:9100")],
                &[(1000, 1.0), (2000, vigil_model::stale_marker())],
            ),
            ts(&[("job", "node"), ("__name__", "load1")], &[(1000, 0.5)]),
        ],
    };
    let body = snappy(&req.encode_to_vec());
    let mut b = batch();
    let mut scratch = Vec::new();
    let sum = remote_write::decode(&body, &Limits::default(), &mut scratch, &mut b).unwrap();
    assert_eq!((sum.series, sum.samples), (2, 3));
    let d = dump(&b);
    assert_eq!(d[0].0, r#"up{instance="a:9100", job="node"}"#);
    assert!(vigil_model::is_stale_marker(d[0].1[1].1));
    assert_eq!(d[1].0, r#"load1{job="node"}"#);
}

#[test]
fn remote_write_malformed_corpus_is_refused_with_a_reason() {
    let lim = Limits::default();
    let good = WriteRequest {
        timeseries: vec![ts(&[("__name__", "up")], &[(1, 1.0)])],
    }
    .encode_to_vec();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "not snappy",
            b"hello world, definitely not snappy".to_vec(),
            "snappy",
        ),
        ("truncated snappy", snappy(&good)[..3].to_vec(), "snappy"),
        (
            "truncated protobuf",
            snappy(&good[..good.len() - 3]),
            "protobuf",
        ),
        (
            "garbage protobuf",
            snappy(&[0x0a, 0xff, 0xff, 0xff, 0x0f, 1, 2]),
            "protobuf",
        ),
        (
            "invalid label name",
            snappy(
                &WriteRequest {
                    timeseries: vec![ts(&[("__name__", "up"), ("bad-name", "x")], &[(1, 1.0)])],
                }
                .encode_to_vec(),
            ),
            "bad-name",
        ),
        (
            "invalid metric name",
            snappy(
                &WriteRequest {
                    timeseries: vec![ts(&[("__name__", "0up")], &[(1, 1.0)])],
                }
                .encode_to_vec(),
            ),
            "metric name",
        ),
        (
            "no metric name",
            snappy(
                &WriteRequest {
                    timeseries: vec![ts(&[("job", "x")], &[(1, 1.0)])],
                }
                .encode_to_vec(),
            ),
            "metric name",
        ),
        (
            "duplicate label",
            snappy(
                &WriteRequest {
                    timeseries: vec![ts(
                        &[("__name__", "up"), ("a", "1"), ("a", "2")],
                        &[(1, 1.0)],
                    )],
                }
                .encode_to_vec(),
            ),
            "duplicate",
        ),
    ];
    for (what, body, needle) in cases {
        let mut b = batch();
        let e = remote_write::decode(&body, &lim, &mut Vec::new(), &mut b).expect_err(what);
        assert!(e.to_string().contains(needle), "{what}: {e}");
    }
}

/// Hand-encodes a `WriteRequest` with one series whose labels are raw bytes (prost only takes
/// valid strings).
fn raw_request(labels: &[(&[u8], &[u8])]) -> Vec<u8> {
    fn field(tag: u8, b: &[u8], out: &mut Vec<u8>) {
        out.push(tag);
        out.push(b.len() as u8);
        out.extend_from_slice(b);
    }
    let mut series = Vec::new();
    for (n, v) in labels {
        let mut l = Vec::new();
        field(0x0a, n, &mut l);
        field(0x12, v, &mut l);
        field(0x0a, &l, &mut series);
    }
    let mut req = Vec::new();
    field(0x0a, &series, &mut req);
    req
}

#[test]
fn remote_write_label_text_must_be_utf8_piece_by_piece() {
    let lim = Limits::default();
    // Each string is checked on its own: a name ending in a lead byte and a value starting
    // with its continuation byte are both invalid, though together they spell "aé".
    for (labels, needle) in [
        (
            vec![(&b"__name__"[..], &b"up"[..]), (b"a\xc3", b"\xa9")],
            "label name",
        ),
        (
            vec![(&b"__name__"[..], &b"up"[..]), (b"job", b"\xff")],
            "label value",
        ),
    ] {
        let e = remote_write::decode_uncompressed(&raw_request(&labels), &lim, &mut batch())
            .unwrap_err();
        assert!(e.to_string().contains(needle), "{e}");
    }
    // Multi-byte text that is valid decodes intact.
    let mut b = batch();
    remote_write::decode_uncompressed(
        &raw_request(&[
            (b"__name__", b"up"),
            ("zone".as_bytes(), "zürich-é".as_bytes()),
        ]),
        &lim,
        &mut b,
    )
    .unwrap();
    assert_eq!(b.labels_of(0).to_string(), r#"up{zone="zürich-é"}"#);
}

#[test]
fn snappy_bomb_is_refused_before_allocating() {
    // A 6-byte body whose header claims ~3 GB.
    let body = [0xff, 0xff, 0xff, 0xff, 0x0b, 0x00];
    let e =
        remote_write::decode(&body, &Limits::default(), &mut Vec::new(), &mut batch()).unwrap_err();
    assert!(
        matches!(
            e,
            DecodeError::TooLarge { .. } | DecodeError::Compression(_)
        ),
        "{e}"
    );
    let big = vec![0u8; 10_000];
    let lim = Limits {
        max_decompressed_bytes: 1000,
        ..Limits::default()
    };
    let e = remote_write::decode(&snappy(&big), &lim, &mut Vec::new(), &mut batch()).unwrap_err();
    assert!(
        matches!(
            e,
            DecodeError::TooLarge {
                what: "decompressed body",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn too_many_samples_is_refused() {
    let req = WriteRequest {
        timeseries: (0..10)
            .map(|i| {
                ts(
                    &[("__name__", "m"), ("i", &i.to_string())],
                    &[(1, 1.0), (2, 2.0)],
                )
            })
            .collect(),
    };
    let lim = Limits {
        max_samples_per_request: 15,
        ..Limits::default()
    };
    let e = remote_write::decode(
        &snappy(&req.encode_to_vec()),
        &lim,
        &mut Vec::new(),
        &mut batch(),
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            DecodeError::TooLarge {
                what: "samples in request",
                ..
            }
        ),
        "{e}"
    );
}

// ---- Influx -------------------------------------------------------------------------------

#[test]
fn influx_types_tags_escapes_and_precision() {
    let body =
        b"cpu,host=a,region=eu\\ west usage_idle=90.5,usage_user=3i,busy=t 1700000000000000000\n\
                 # comment\n\
                 mem\\,x,host=b value=1u 1700000000000000000\n\
                 disk,path=/var\\=x free=2.5\n";
    let mut b = batch();
    let sum = influx::decode(
        body,
        influx::Precision::Ns,
        &[("db", "telegraf")],
        42,
        &Limits::default(),
        &mut b,
    )
    .unwrap();
    assert_eq!(sum.samples, 5);
    let d = dump(&b);
    assert_eq!(
        d[0],
        (
            r#"cpu_usage_idle{db="telegraf", host="a", region="eu west"}"#.into(),
            vec![(1_700_000_000_000, 90.5)]
        )
    );
    assert_eq!(d[1].1, vec![(1_700_000_000_000, 3.0)]);
    assert_eq!(
        d[2].0,
        r#"cpu_busy{db="telegraf", host="a", region="eu west"}"#
    );
    assert_eq!(d[2].1[0].1, 1.0);
    assert_eq!(d[3].0, r#"mem_x{db="telegraf", host="b"}"#);
    assert_eq!(
        d[4],
        (
            r#"disk_free{db="telegraf", path="/var=x"}"#.into(),
            vec![(42, 2.5)]
        )
    );
    let mut b = batch();
    influx::decode(
        b"m v=1 1700000000",
        influx::Precision::S,
        &[],
        0,
        &Limits::default(),
        &mut b,
    )
    .unwrap();
    assert_eq!(b.samples_of(0)[0].0, 1_700_000_000_000);
}

#[test]
fn influx_malformed_lines_name_the_line() {
    let lim = Limits::default();
    for (body, needle) in [
        (&b"cpu"[..], "line 1: missing fields"),
        (b"ok v=1\ncpu,host=a\n", "line 2"),
        (b"cpu v=\"text\"", "string fields"),
        (b"cpu v=1 notatime", "bad timestamp"),
        (b"cpu,host v=1", "no '='"),
        (b"cpu v=abc", "bad float"),
        (b"cpu v=12x", "bad float"),
        (b"cpu v=1.5i", "bad integer"),
        (b"\xff\xfe v=1", "UTF-8"),
    ] {
        let e =
            influx::decode(body, influx::Precision::Ns, &[], 0, &lim, &mut batch()).unwrap_err();
        assert!(
            e.to_string().contains(needle),
            "{:?}: {e}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn influx_tag_amplification_is_bounded() {
    // One line: 2 KB of tags shared by 200 fields → 400 KB of labels from a 3 KB body.
    let tags: String = (0..2)
        .map(|i| format!(",t{i}={}", "x".repeat(1000)))
        .collect();
    let fields: Vec<String> = (0..200).map(|i| format!("f{i}=1")).collect();
    let body = format!("m{tags} {}", fields.join(","));
    let lim = Limits {
        max_decompressed_bytes: 50_000,
        ..Limits::default()
    };
    let e = influx::decode(
        body.as_bytes(),
        influx::Precision::Ns,
        &[],
        0,
        &lim,
        &mut batch(),
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            DecodeError::TooLarge {
                what: "label bytes after expansion",
                ..
            }
        ),
        "{e}"
    );
}

// ---- Prometheus text ------------------------------------------------------------------------

#[test]
fn prom_text_with_and_without_timestamps() {
    let body = b"# HELP up Whether up.\n# TYPE up gauge\nup{job=\"node\",path=\"C:\\\\x\\\"y\\\"\"} 1 1700000000000\nload1 0.5\nhist_bucket{le=\"+Inf\"} +Inf\n";
    let mut b = batch();
    let sum = prom_text::decode(body, 99, &[], &Limits::default(), &mut b).unwrap();
    assert_eq!(sum.samples, 3);
    let d = dump(&b);
    assert_eq!(d[0].0, r#"up{job="node", path="C:\\x\"y\""}"#);
    assert_eq!(d[0].1, vec![(1_700_000_000_000, 1.0)]);
    assert_eq!(d[1].1, vec![(99, 0.5)]);
    assert_eq!(d[2].1[0].1, f64::INFINITY);
}

#[test]
fn prom_text_malformed_lines_name_the_line() {
    for (body, needle) in [
        (&b"up"[..], "line 1"),
        (b"up{job=node} 1", "not quoted"),
        (b"up{job=\"x} 1", "unterminated"),
        (b"ok 1\nup 1 2 3", "line 2"),
        (b"up abc", "bad value"),
        (b"up{a=\"\\q\"} 1", "bad escape"),
        (b"up{bad-name=\"x\"} 1", "bad-name"),
    ] {
        let e = prom_text::decode(body, 0, &[], &Limits::default(), &mut batch()).unwrap_err();
        assert!(
            e.to_string().contains(needle),
            "{:?}: {e}",
            String::from_utf8_lossy(body)
        );
    }
}

// ---- native JSON ---------------------------------------------------------------------------

#[test]
fn native_snapshot_maps_to_node_exporter_names() {
    let body = serde_json::json!({
        "agent_id": "web-01",
        "timestamp_ms": 1_700_000_000_000i64,
        "labels": {"zone": "eu-1"},
        "cpu": {"usage_percent": 12.5, "load1": 0.7, "seconds": {"user": 100.5, "idle": 900.0}},
        "memory": {"total_bytes": 8e9, "available_bytes": 4e9},
        "disks": [{"mountpoint": "/", "device": "/dev/sda1", "fstype": "ext4", "free_bytes": 1e9}],
        "network": [{"interface": "eth0", "rx_bytes": 12345.0}],
        "metrics": [{"name": "app_requests_total", "labels": {"code": "200"}, "value": 7}]
    });
    let mut b = batch();
    let sum = native::decode(body.to_string().as_bytes(), 0, &Limits::default(), &mut b).unwrap();
    assert_eq!(sum.samples, 9);
    let names: Vec<String> = dump(&b).into_iter().map(|d| d.0).collect();
    let has = |s: &str| names.iter().any(|n| n == s);
    assert!(
        has(r#"node_load1{agent="web-01", instance="web-01", job="vigil-agent", zone="eu-1"}"#),
        "{names:#?}"
    );
    assert!(
        has(
            r#"node_cpu_seconds_total{agent="web-01", cpu="all", instance="web-01", job="vigil-agent", mode="user", zone="eu-1"}"#
        ),
        "{names:#?}"
    );
    assert!(has(
        r#"node_memory_MemAvailable_bytes{agent="web-01", instance="web-01", job="vigil-agent", zone="eu-1"}"#
    ));
    assert!(has(
        r#"node_filesystem_free_bytes{agent="web-01", device="/dev/sda1", fstype="ext4", instance="web-01", job="vigil-agent", mountpoint="/", zone="eu-1"}"#
    ));
    assert!(has(
        r#"node_network_receive_bytes_total{agent="web-01", device="eth0", instance="web-01", job="vigil-agent", zone="eu-1"}"#
    ));
    assert!(has(
        r#"app_requests_total{agent="web-01", code="200", instance="web-01", job="vigil-agent", zone="eu-1"}"#
    ));
}

#[test]
fn native_snapshot_errors_name_the_field() {
    for (body, needle) in [
        (
            r#"{"agent_id": "a", "cpu": {"load1": "high"}}"#,
            "invalid type",
        ),
        (r#"{"agent_id": "a", "cpuu": {}}"#, "unknown field `cpuu`"),
        (r#"{"cpu": {}}"#, "missing field `agent_id`"),
        (r#"{"agent_id": ""}"#, "agent_id"),
        (
            r#"{"agent_id": "a", "metrics": [{"name": "bad-name", "value": 1}]}"#,
            "metrics",
        ),
        (r#"{"agent_id": "a""#, "EOF"),
    ] {
        let e = native::decode(body.as_bytes(), 0, &Limits::default(), &mut batch()).unwrap_err();
        assert!(e.to_string().contains(needle), "{body}: {e}");
    }
}

// ---- OTLP ----------------------------------------------------------------------------------

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

fn otlp_request(temporality: om::AggregationTemporality) -> ExportMetricsServiceRequest {
    let t = 1_700_000_000_000_000_000u64;
    let num = |v: f64, attrs: Vec<KeyValue>| om::NumberDataPoint {
        attributes: attrs,
        time_unix_nano: t,
        value: Some(om::number_data_point::Value::AsDouble(v)),
        ..Default::default()
    };
    ExportMetricsServiceRequest {
        resource_metrics: vec![om::ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", "checkout"),
                    kv("service.namespace", "shop"),
                    kv("service.instance.id", "pod-1"),
                    kv("host.name", "h1"),
                ],
                ..Default::default()
            }),
            scope_metrics: vec![om::ScopeMetrics {
                metrics: vec![
                    om::Metric {
                        name: "process.memory.usage".into(),
                        unit: "By".into(),
                        data: Some(om::metric::Data::Gauge(om::Gauge {
                            data_points: vec![num(1024.0, vec![])],
                        })),
                        ..Default::default()
                    },
                    om::Metric {
                        name: "http.server.requests".into(),
                        unit: "{request}".into(),
                        data: Some(om::metric::Data::Sum(om::Sum {
                            data_points: vec![num(7.0, vec![kv("http.method", "GET")])],
                            aggregation_temporality: temporality as i32,
                            is_monotonic: true,
                        })),
                        ..Default::default()
                    },
                    om::Metric {
                        name: "http.server.duration".into(),
                        unit: "s".into(),
                        data: Some(om::metric::Data::Histogram(om::Histogram {
                            data_points: vec![om::HistogramDataPoint {
                                time_unix_nano: t,
                                count: 6,
                                sum: Some(1.5),
                                bucket_counts: vec![1, 2, 3],
                                explicit_bounds: vec![0.1, 0.5],
                                ..Default::default()
                            }],
                            aggregation_temporality: om::AggregationTemporality::Cumulative as i32,
                        })),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[test]
fn otlp_protobuf_and_json_translate_like_prometheus() {
    let req = otlp_request(om::AggregationTemporality::Cumulative);
    let mut pb = batch();
    otlp::decode_protobuf(&req.encode_to_vec(), &Limits::default(), &mut pb).unwrap();
    let mut js = batch();
    otlp::decode_json(
        serde_json::to_string(&req).unwrap().as_bytes(),
        &Limits::default(),
        &mut js,
    )
    .unwrap();
    assert_eq!(dump(&pb), dump(&js));
    let d = dump(&pb);
    let names: Vec<&str> = d.iter().map(|x| x.0.as_str()).collect();
    assert!(
        names.contains(&r#"process_memory_usage_bytes{instance="pod-1", job="shop/checkout"}"#),
        "{names:#?}"
    );
    assert!(names.contains(&r#"http_server_requests_total{http_method="GET", instance="pod-1", job="shop/checkout"}"#), "{names:#?}");
    assert!(names.contains(&r#"http_server_duration_seconds_bucket{instance="pod-1", job="shop/checkout", le="0.5"}"#), "{names:#?}");
    assert!(
        names.contains(&r#"target_info{host_name="h1", instance="pod-1", job="shop/checkout"}"#),
        "{names:#?}"
    );
    let le = |l: &str| {
        d.iter()
            .find(|x| x.0.contains(&format!("le=\"{l}\"")))
            .unwrap()
            .1[0]
            .1
    };
    assert_eq!((le("0.1"), le("0.5"), le("+Inf")), (1.0, 3.0, 6.0));
    assert_eq!(d[0].1[0].0, 1_700_000_000_000);
}

#[test]
fn otlp_delta_is_refused_with_the_metric_named() {
    let req = otlp_request(om::AggregationTemporality::Delta);
    let e =
        otlp::decode_protobuf(&req.encode_to_vec(), &Limits::default(), &mut batch()).unwrap_err();
    assert!(
        e.to_string().contains("http.server.requests") && e.to_string().contains("delta"),
        "{e}"
    );
}

#[test]
fn otlp_malformed_is_refused() {
    assert!(otlp::decode_protobuf(&[0x0a, 0x05, 0x01], &Limits::default(), &mut batch()).is_err());
    assert!(
        otlp::decode_json(
            b"{\"resourceMetrics\": 5}",
            &Limits::default(),
            &mut batch()
        )
        .is_err()
    );
}

#[test]
fn unit_suffixes() {
    assert_eq!(
        otlp::metric_name("a.b", "ms", false, true),
        "a_b_milliseconds"
    );
    assert_eq!(
        otlp::metric_name("cpu.utilization", "1", false, true),
        "cpu_utilization_ratio"
    );
    assert_eq!(
        otlp::metric_name("x", "By/s", false, true),
        "x_bytes_per_seconds"
    );
    assert_eq!(otlp::metric_name("x_total", "", true, false), "x_total");
}

// ---- never panic ---------------------------------------------------------------------------

proptest! {
    #[test]
    fn no_decoder_panics_on_arbitrary_bytes(b in proptest::collection::vec(any::<u8>(), 0..512)) {
        let lim = Limits { max_decompressed_bytes: 1 << 20, ..Limits::default() };
        let _ = remote_write::decode(&b, &lim, &mut Vec::new(), &mut batch());
        let _ = remote_write::decode_uncompressed(&b, &lim, &mut batch());
        let _ = influx::decode(&b, influx::Precision::Ns, &[], 0, &lim, &mut batch());
        let _ = prom_text::decode(&b, 0, &[], &lim, &mut batch());
        let _ = native::decode(&b, 0, &lim, &mut batch());
        let _ = otlp::decode_protobuf(&b, &lim, &mut batch());
        let _ = otlp::decode_json(&b, &lim, &mut batch());
    }

    #[test]
    fn no_text_decoder_panics_on_arbitrary_text(s in "[ -~\\n\\\\\"{}=,]{0,200}") {
        let lim = Limits::default();
        let _ = influx::decode(s.as_bytes(), influx::Precision::Ms, &[], 0, &lim, &mut batch());
        let _ = prom_text::decode(s.as_bytes(), 0, &[], &lim, &mut batch());
    }

    #[test]
    fn remote_write_roundtrips_any_valid_request(
        series in proptest::collection::vec((proptest::collection::vec((0i64..1_000_000, any::<u64>()), 1..5), "[a-z]{1,8}"), 1..20)
    ) {
        let req = WriteRequest {
            timeseries: series.iter().enumerate().map(|(i, (samples, v))| TimeSeries {
                labels: vec![PLabel { name: "__name__".into(), value: "m".into() }, PLabel { name: "i".into(), value: i.to_string() }, PLabel { name: "v".into(), value: v.clone() }],
                samples: samples.iter().map(|&(t, bits)| PSample { value: f64::from_bits(bits), timestamp: t }).collect(),
            }).collect(),
        };
        let mut b = batch();
        remote_write::decode(&snappy(&req.encode_to_vec()), &Limits::default(), &mut Vec::new(), &mut b).unwrap();
        prop_assert_eq!(b.series_len(), series.len());
        for (i, (samples, _)) in series.iter().enumerate() {
            let got: Vec<(i64, u64)> = b.samples_of(i).iter().map(|&(t, v)| (t, v.to_bits())).collect();
            prop_assert_eq!(&got, samples);
        }
    }
}

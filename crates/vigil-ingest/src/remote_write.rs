//! Prometheus remote_write 1.0: a snappy (block format) compressed protobuf `WriteRequest`.
//!
//! The decoder reads the protobuf wire format directly into a [`WriteBatch`] without building
//! intermediate messages: labels are copied once into the batch's arena, samples into its
//! sample vector. The snappy length header is checked against the limit before anything is
//! allocated. Exemplars, native histograms and metadata are skipped (counted).
//!
//! ```text
//! WriteRequest { repeated TimeSeries timeseries = 1; repeated MetricMetadata metadata = 3; }
//! TimeSeries   { repeated Label labels = 1; repeated Sample samples = 2;
//!                repeated Exemplar exemplars = 3; repeated Histogram histograms = 4; }
//! Label        { string name = 1; string value = 2; }
//! Sample       { double value = 1; int64 timestamp = 2; }
//! ```

use vigil_tsdb::WriteBatch;

use crate::protobuf::{Fields, Wire};
use crate::{DecodeError, Limits, Summary};

/// Decompresses a snappy block, refusing bodies whose declared size exceeds the limit.
pub fn decompress(body: &[u8], limits: &Limits, out: &mut Vec<u8>) -> Result<(), DecodeError> {
    let n = snap::raw::decompress_len(body)
        .map_err(|e| DecodeError::Compression(format!("snappy: {e}")))?;
    if n > limits.max_decompressed_bytes {
        return Err(DecodeError::TooLarge {
            what: "decompressed body",
            size: n,
            limit: limits.max_decompressed_bytes,
        });
    }
    out.clear();
    out.resize(n, 0);
    let got = snap::raw::Decoder::new()
        .decompress(body, out)
        .map_err(|e| DecodeError::Compression(format!("snappy: {e}")))?;
    out.truncate(got);
    Ok(())
}

/// Decodes a snappy-compressed `WriteRequest` into `batch`.
pub fn decode(
    body: &[u8],
    limits: &Limits,
    scratch: &mut Vec<u8>,
    batch: &mut WriteBatch,
) -> Result<Summary, DecodeError> {
    decompress(body, limits, scratch)?;
    decode_uncompressed(scratch, limits, batch)
}

fn utf8<'a>(b: &'a [u8], what: &'static str, series: usize) -> Result<&'a str, DecodeError> {
    std::str::from_utf8(b).map_err(|_| DecodeError::Field {
        series,
        field: what,
        reason: "not valid UTF-8".into(),
    })
}

/// The common encoding of a `Label`: field 1 then field 2, each shorter than 128 bytes and
/// nothing else. Anything else (`None`) takes the general field reader.
fn short_label(b: &[u8]) -> Option<(&[u8], &[u8])> {
    match b {
        [0x0a, n, rest @ ..] if *n < 0x80 && rest.len() >= *n as usize + 2 => {
            let (name, rest) = rest.split_at(*n as usize);
            match rest {
                [0x12, m, value @ ..] if *m < 0x80 && value.len() == *m as usize => {
                    Some((name, value))
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// The common encoding of a `Sample`: the double (field 1) then the timestamp varint (field
/// 2), nothing else. Returns (value bits, timestamp).
fn plain_sample(b: &[u8]) -> Option<(u64, i64)> {
    let [0x09, v0, v1, v2, v3, v4, v5, v6, v7, 0x10, ts @ ..] = b else {
        return None;
    };
    let v = u64::from_le_bytes([*v0, *v1, *v2, *v3, *v4, *v5, *v6, *v7]);
    let mut t = 0u64;
    for (i, &x) in ts.iter().enumerate() {
        // The tenth byte may only carry the 64th bit (and always ends the varint).
        if i == 9 && x > 1 {
            return None;
        }
        t |= ((x & 0x7f) as u64) << (7 * i);
        if x < 0x80 {
            return (i + 1 == ts.len()).then_some((v, t as i64));
        }
    }
    None
}

/// Adds one series' labels to `batch`: `raw` holds name and value bytes back to back,
/// `cuts` each label's (name end, value end). One UTF-8 check covers them all; the cut points
/// must then be character boundaries for every piece to be valid on its own.
fn push_labels(
    raw: &[u8],
    cuts: &[(usize, usize)],
    series: usize,
    batch: &mut WriteBatch,
) -> Result<(), DecodeError> {
    let all = match std::str::from_utf8(raw) {
        Ok(s)
            if cuts
                .iter()
                .all(|&(m, e)| s.is_char_boundary(m) && s.is_char_boundary(e)) =>
        {
            s
        }
        _ => {
            // Name the culprit.
            let mut start = 0;
            for &(m, e) in cuts {
                utf8(&raw[start..m], "label name", series)?;
                utf8(&raw[m..e], "label value", series)?;
                start = e;
            }
            return Err(DecodeError::Field {
                series,
                field: "label",
                reason: "not valid UTF-8".into(),
            });
        }
    };
    let mut start = 0;
    for &(m, e) in cuts {
        batch.push_label(&all[start..m], &all[m..e]);
        start = e;
    }
    Ok(())
}

/// Decodes an uncompressed `WriteRequest` into `batch`.
pub fn decode_uncompressed(
    buf: &[u8],
    limits: &Limits,
    batch: &mut WriteBatch,
) -> Result<Summary, DecodeError> {
    let mut sum = Summary::default();
    let mut req = Fields::new(buf);
    let mut raw: Vec<u8> = Vec::with_capacity(512);
    let mut cuts: Vec<(usize, usize)> = Vec::with_capacity(32);
    let wire = |series: usize, e: crate::protobuf::WireError| DecodeError::Protobuf {
        series,
        reason: e.0.to_string(),
    };
    while let Some(f) = req.next_field() {
        let (num, w, _, bytes) = f.map_err(|e| wire(sum.series, e))?;
        match (num, w) {
            (1, Wire::Len) => {
                let idx = sum.series;
                let mut ts = Fields::new(bytes);
                let mut samples = 0usize;
                // The series' label strings are gathered as bytes and checked as UTF-8 in one
                // call per series (two dozen tiny calls cost more than the copy).
                raw.clear();
                cuts.clear();
                while let Some(f) = ts.next_field() {
                    let (num, w, _, b) = f.map_err(|e| wire(idx, e))?;
                    match (num, w) {
                        (1, Wire::Len) => {
                            let (name, value) = match short_label(b) {
                                Some(nv) => nv,
                                None => {
                                    let (mut name, mut value): (&[u8], &[u8]) = (&[], &[]);
                                    let mut l = Fields::new(b);
                                    while let Some(f) = l.next_field() {
                                        let (num, w, _, b) = f.map_err(|e| wire(idx, e))?;
                                        match (num, w) {
                                            (1, Wire::Len) => name = b,
                                            (2, Wire::Len) => value = b,
                                            _ => {}
                                        }
                                    }
                                    (name, value)
                                }
                            };
                            raw.extend_from_slice(name);
                            let mid = raw.len();
                            raw.extend_from_slice(value);
                            cuts.push((mid, raw.len()));
                        }
                        (2, Wire::Len) => {
                            let (v, t) = match plain_sample(b) {
                                Some(vt) => vt,
                                None => {
                                    let (mut v, mut t) = (0u64, 0i64);
                                    let mut s = Fields::new(b);
                                    while let Some(f) = s.next_field() {
                                        let (num, w, x, _) = f.map_err(|e| wire(idx, e))?;
                                        match (num, w) {
                                            (1, Wire::I64) => v = x,
                                            (2, Wire::Varint) => t = x as i64,
                                            _ => {}
                                        }
                                    }
                                    (v, t)
                                }
                            };
                            batch.push_sample(t, f64::from_bits(v));
                            samples += 1;
                        }
                        (3, _) => sum.exemplars_skipped += 1,
                        (4, _) => sum.histograms_skipped += 1,
                        _ => {}
                    }
                }
                push_labels(&raw, &cuts, idx, batch)?;
                sum.samples += samples;
                limits.check_samples(sum.samples)?;
                batch
                    .finish_series(&limits.labels)
                    .map_err(|source| DecodeError::Labels {
                        series: idx,
                        source,
                    })?;
                sum.series += 1;
            }
            (3, _) => sum.metadata_skipped += 1,
            _ => {}
        }
    }
    Ok(sum)
}

/// The remote_write 1.0 messages as prost types, for senders (the load generator, tests, the
/// agent): decoding does not use them.
pub mod proto {
    /// `prometheus.WriteRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct WriteRequest {
        /// Series.
        #[prost(message, repeated, tag = "1")]
        pub timeseries: Vec<TimeSeries>,
    }
    /// `prometheus.TimeSeries`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TimeSeries {
        /// Labels, `__name__` included.
        #[prost(message, repeated, tag = "1")]
        pub labels: Vec<Label>,
        /// Samples.
        #[prost(message, repeated, tag = "2")]
        pub samples: Vec<Sample>,
    }
    /// `prometheus.Label`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Label {
        /// Name.
        #[prost(string, tag = "1")]
        pub name: String,
        /// Value.
        #[prost(string, tag = "2")]
        pub value: String,
    }
    /// `prometheus.Sample`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        /// Value.
        #[prost(double, tag = "1")]
        pub value: f64,
        /// Milliseconds since the epoch.
        #[prost(int64, tag = "2")]
        pub timestamp: i64,
    }

    impl WriteRequest {
        /// The request as a remote_write body: protobuf, snappy block-compressed.
        pub fn encode_snappy(&self) -> Vec<u8> {
            use prost::Message;
            snap::raw::Encoder::new()
                .compress_vec(&self.encode_to_vec())
                .unwrap_or_default()
        }
    }

    impl TimeSeries {
        /// A series from (name, value) label pairs and (timestamp ms, value) samples.
        pub fn new(labels: &[(&str, &str)], samples: &[(i64, f64)]) -> Self {
            Self {
                labels: labels
                    .iter()
                    .map(|(n, v)| Label {
                        name: n.to_string(),
                        value: v.to_string(),
                    })
                    .collect(),
                samples: samples
                    .iter()
                    .map(|&(timestamp, value)| Sample { value, timestamp })
                    .collect(),
            }
        }
    }
}

//! Ingestion decoders: bytes of one protocol in, a [`vigil_tsdb::WriteBatch`] out.
//!
//! One module per protocol, each a pure function of the body, the [`Limits`] and the batch to
//! fill — no HTTP, no I/O, no clock except an explicit `now_ms` where the protocol lets
//! timestamps be omitted. Every decoder validates the whole payload before the caller stores
//! anything: an error leaves nothing to store, and names what is wrong (series, line, field).
//! Decoders never panic on any input (property-tested), and bound every size before allocating.

pub mod influx;
pub mod native;
pub mod otlp;
pub mod prom_text;
mod protobuf;
pub mod remote_write;

use vigil_model::{LabelError, LabelLimits};

/// Size limits applied while decoding.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest body after decompression.
    pub max_decompressed_bytes: usize,
    /// Most samples in one request.
    pub max_samples_per_request: usize,
    /// Label naming rules and limits.
    pub labels: LabelLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_decompressed_bytes: 64 << 20,
            max_samples_per_request: 2_000_000,
            labels: LabelLimits::default(),
        }
    }
}

impl Limits {
    /// Refuses a body larger than the decompressed-size limit.
    pub fn check_body(&self, len: usize) -> Result<(), DecodeError> {
        if len > self.max_decompressed_bytes {
            return Err(DecodeError::TooLarge {
                what: "body",
                size: len,
                limit: self.max_decompressed_bytes,
            });
        }
        Ok(())
    }

    /// Refuses a request whose labels, copied per series, grew past four times the
    /// decompressed-body limit (a small body of shared tags and many fields must not
    /// exhaust memory).
    pub fn check_expansion(&self, batch: &vigil_tsdb::WriteBatch) -> Result<(), DecodeError> {
        let cap = self.max_decompressed_bytes.saturating_mul(4);
        if batch.label_bytes() > cap {
            return Err(DecodeError::TooLarge {
                what: "label bytes after expansion",
                size: batch.label_bytes(),
                limit: cap,
            });
        }
        Ok(())
    }

    /// Refuses a request with more samples than allowed.
    pub fn check_samples(&self, n: usize) -> Result<(), DecodeError> {
        if n > self.max_samples_per_request {
            return Err(DecodeError::TooLarge {
                what: "samples in request",
                size: n,
                limit: self.max_samples_per_request,
            });
        }
        Ok(())
    }
}

/// What a decoder read besides the samples it put in the batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Series decoded.
    pub series: usize,
    /// Samples decoded.
    pub samples: usize,
    /// Exemplars ignored.
    pub exemplars_skipped: usize,
    /// Native histograms ignored.
    pub histograms_skipped: usize,
    /// Metadata entries ignored.
    pub metadata_skipped: usize,
}

/// Why a payload was refused. Every variant says where and what.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// The body does not decompress.
    #[error("body does not decompress: {0}")]
    Compression(String),
    /// A size limit was exceeded.
    #[error("{what} is {size}, over the limit of {limit}")]
    TooLarge {
        /// What was measured.
        what: &'static str,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The protobuf is malformed.
    #[error("malformed protobuf in series {series}: {reason}")]
    Protobuf {
        /// Index of the series being read.
        series: usize,
        /// What is wrong.
        reason: String,
    },
    /// A series' labels break the rules.
    #[error("series {series}: {source}")]
    Labels {
        /// Index of the series.
        series: usize,
        /// The rule broken.
        source: LabelError,
    },
    /// A field has a bad value.
    #[error("series {series}, field {field}: {reason}")]
    Field {
        /// Index of the series.
        series: usize,
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A text line does not parse.
    #[error("line {line}: {reason}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A JSON body does not parse.
    #[error("invalid JSON: {0}")]
    Json(String),
    /// The payload uses something Vigil refuses (e.g. delta temporality it cannot convert).
    #[error("unsupported: {0}")]
    Unsupported(String),
}

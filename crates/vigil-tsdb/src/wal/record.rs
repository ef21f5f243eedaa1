//! WAL records: what one entry of the log holds, and its byte encoding.
//!
//! Framing: `[u32 LE len][u32 LE crc32c(type ‖ payload)][u8 type][payload]` where `len` counts
//! the type byte and the payload. Payloads are described in `docs/format/wal.md`.

use vigil_model::MatchOp;

use crate::encoding::{Reader, put_bytes, put_uvarint, put_varint};

/// Bytes of framing before the type byte.
pub const FRAME_HEADER: usize = 8;
/// Largest record accepted on replay (a corrupt length beyond this ends the segment).
pub const MAX_RECORD: usize = 512 << 20;

/// Record type bytes.
pub mod kind {
    /// New series: their refs, environment and labels.
    pub const SERIES: u8 = 1;
    /// Samples for known refs.
    pub const SAMPLES: u8 = 2;
    /// A deletion by matchers over a time range.
    pub const TOMBSTONE: u8 = 3;
}

/// A series definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesRec {
    /// The head's reference for the series.
    pub sref: u32,
    /// Environment name.
    pub env: String,
    /// Labels in name order.
    pub labels: Vec<(String, String)>,
}

/// One sample for a series ref.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleRec {
    /// Series ref.
    pub sref: u32,
    /// Timestamp, ms.
    pub ts: i64,
    /// Value.
    pub v: f64,
}

/// A deletion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TombstoneRec {
    /// Environment.
    pub env: String,
    /// Matchers as (op, name, value).
    pub matchers: Vec<(MatchOp, String, String)>,
    /// First deleted timestamp.
    pub mint: i64,
    /// Last deleted timestamp.
    pub maxt: i64,
}

/// A decoded record.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// Series definitions.
    Series(Vec<SeriesRec>),
    /// Samples.
    Samples(Vec<SampleRec>),
    /// A deletion.
    Tombstone(TombstoneRec),
}

/// Starts a framed record of `kind` in `out`; returns the frame start for [`finish`].
pub fn begin(out: &mut Vec<u8>, kind: u8) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER]);
    out.push(kind);
    start
}

/// Completes the frame begun at `start` by filling in length and checksum.
pub fn finish(out: &mut [u8], start: usize) {
    let body = &out[start + FRAME_HEADER..];
    let len = body.len() as u32;
    let crc = crc32c::crc32c(body);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Encodes a series record for the given definitions.
pub fn encode_series<'a>(
    out: &mut Vec<u8>,
    series: impl ExactSizeIterator<Item = (u32, &'a str, Vec<(&'a str, &'a str)>)>,
) {
    let start = begin(out, kind::SERIES);
    put_uvarint(out, series.len() as u64);
    for (sref, env, labels) in series {
        put_uvarint(out, sref as u64);
        put_bytes(out, env.as_bytes());
        put_uvarint(out, labels.len() as u64);
        for (n, v) in labels {
            put_bytes(out, n.as_bytes());
            put_bytes(out, v.as_bytes());
        }
    }
    finish(out, start);
}

/// Encodes a samples record.
pub fn encode_samples(out: &mut Vec<u8>, samples: &[SampleRec]) {
    let start = begin(out, kind::SAMPLES);
    put_uvarint(out, samples.len() as u64);
    let base = samples.first().map_or(0, |s| s.ts);
    put_varint(out, base);
    for s in samples {
        put_uvarint(out, s.sref as u64);
        put_varint(out, s.ts.wrapping_sub(base));
        out.extend_from_slice(&s.v.to_bits().to_le_bytes());
    }
    finish(out, start);
}

fn op_byte(op: MatchOp) -> u8 {
    match op {
        MatchOp::Eq => 0,
        MatchOp::Ne => 1,
        MatchOp::Re => 2,
        MatchOp::Nre => 3,
    }
}

fn byte_op(b: u8) -> Option<MatchOp> {
    Some(match b {
        0 => MatchOp::Eq,
        1 => MatchOp::Ne,
        2 => MatchOp::Re,
        3 => MatchOp::Nre,
        _ => return None,
    })
}

/// Encodes a tombstone record.
pub fn encode_tombstone(out: &mut Vec<u8>, t: &TombstoneRec) {
    let start = begin(out, kind::TOMBSTONE);
    put_bytes(out, t.env.as_bytes());
    put_uvarint(out, t.matchers.len() as u64);
    for (op, n, v) in &t.matchers {
        out.push(op_byte(*op));
        put_bytes(out, n.as_bytes());
        put_bytes(out, v.as_bytes());
    }
    put_varint(out, t.mint);
    put_varint(out, t.maxt);
    finish(out, start);
}

/// Decodes a record body (type byte and payload, after the checksum was verified).
pub fn decode(body: &[u8]) -> Result<Record, String> {
    let mut r = Reader::new(body);
    let kind = r.u8().ok_or("empty record")?;
    let short = || "record truncated".to_string();
    let rec = match kind {
        kind::SERIES => {
            let n = r.count(3).ok_or_else(short)?;
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                let sref = r.uvarint().ok_or_else(short)?;
                let sref =
                    u32::try_from(sref).map_err(|_| format!("series ref {sref} out of range"))?;
                let env = r.str().ok_or_else(short)?.to_string();
                let nl = r.count(2).ok_or_else(short)?;
                let mut labels = Vec::with_capacity(nl);
                for _ in 0..nl {
                    let name = r.str().ok_or_else(short)?.to_string();
                    let value = r.str().ok_or_else(short)?.to_string();
                    labels.push((name, value));
                }
                v.push(SeriesRec { sref, env, labels });
            }
            Record::Series(v)
        }
        kind::SAMPLES => {
            let n = r.count(10).ok_or_else(short)?;
            let base = r.varint().ok_or_else(short)?;
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                let sref = r.uvarint().ok_or_else(short)?;
                let sref =
                    u32::try_from(sref).map_err(|_| format!("series ref {sref} out of range"))?;
                let ts = base.wrapping_add(r.varint().ok_or_else(short)?);
                let bits = r.u64_le().ok_or_else(short)?;
                v.push(SampleRec {
                    sref,
                    ts,
                    v: f64::from_bits(bits),
                });
            }
            Record::Samples(v)
        }
        kind::TOMBSTONE => {
            let env = r.str().ok_or_else(short)?.to_string();
            let n = r.count(3).ok_or_else(short)?;
            let mut matchers = Vec::with_capacity(n);
            for _ in 0..n {
                let op = byte_op(r.u8().ok_or_else(short)?).ok_or("bad matcher op")?;
                let name = r.str().ok_or_else(short)?.to_string();
                let value = r.str().ok_or_else(short)?.to_string();
                matchers.push((op, name, value));
            }
            let mint = r.varint().ok_or_else(short)?;
            let maxt = r.varint().ok_or_else(short)?;
            Record::Tombstone(TombstoneRec {
                env,
                matchers,
                mint,
                maxt,
            })
        }
        other => return Err(format!("unknown record type {other}")),
    };
    if !r.is_empty() {
        return Err(format!("{} trailing bytes after record", r.remaining()));
    }
    Ok(rec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn body(framed: &[u8]) -> &[u8] {
        &framed[FRAME_HEADER..]
    }

    #[test]
    fn records_roundtrip() {
        let mut b = Vec::new();
        encode_series(
            &mut b,
            vec![(7u32, "prod", vec![("__name__", "up"), ("job", "n")])].into_iter(),
        );
        assert_eq!(
            decode(body(&b)).unwrap(),
            Record::Series(vec![SeriesRec {
                sref: 7,
                env: "prod".into(),
                labels: vec![("__name__".into(), "up".into()), ("job".into(), "n".into())]
            }])
        );
        let mut b = Vec::new();
        let s = vec![
            SampleRec {
                sref: 1,
                ts: 100,
                v: 1.5,
            },
            SampleRec {
                sref: 9,
                ts: 50,
                v: -0.0,
            },
        ];
        encode_samples(&mut b, &s);
        match decode(body(&b)).unwrap() {
            Record::Samples(got) => {
                assert_eq!(got.len(), 2);
                assert_eq!(got[1].v.to_bits(), (-0.0f64).to_bits());
                assert_eq!(got[1].ts, 50);
            }
            r => panic!("{r:?}"),
        }
        let t = TombstoneRec {
            env: "e".into(),
            matchers: vec![(MatchOp::Re, "a".into(), "b.*".into())],
            mint: -5,
            maxt: 9,
        };
        let mut b = Vec::new();
        encode_tombstone(&mut b, &t);
        assert_eq!(decode(body(&b)).unwrap(), Record::Tombstone(t));
    }

    proptest! {
        #[test]
        fn decode_never_panics(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&b);
        }
    }
}

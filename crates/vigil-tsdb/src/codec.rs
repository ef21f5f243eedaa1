//! Encodings of sealed chunks in blocks, chosen per chunk by size.
//!
//! Raw samples are stored as [`Encoding::Xor`] (the head's Gorilla-style stream, cheap for
//! short or regular series) or [`Encoding::PcoSharedTs`] (values as a pcodec column, timestamps
//! as a pcodec column stored once per block and shared by every series with identical
//! timestamps — all series of one agent). The block writer encodes both ways and keeps the
//! smaller, so the choice is a measurement made for every chunk; the benchmark prints the totals
//! of each. [`Encoding::Pco`] (both columns inline) is still read. Rollups (downsampled data) use
//! [`Encoding::RollupPcoShared`] (eleven pcodec columns, those alike across series stored once
//! per block), or [`Encoding::RollupPlainEdges`] when short; [`Encoding::RollupPcoEdges`]
//! (every column inline), [`Encoding::RollupPco`] and [`Encoding::RollupPlain`] (written
//! before rollups kept their buckets' edges) are still read.
//!
//! Decoding takes untrusted bytes (checksums are verified by the caller first, but the decoders
//! still bound every length) and never panics.

use crate::chunk::{XorAppender, decode_xor};
use crate::encoding::{Reader, put_bytes, put_uvarint, put_varint};

/// How a block chunk is encoded; the byte stored in the chunk record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Encoding {
    /// Delta-of-delta timestamps and XOR floats ([`crate::chunk`]).
    Xor = 1,
    /// `[uvarint n][bytes ts][bytes values]`, both pcodec standalone streams.
    Pco = 2,
    /// A rollup chunk: `[uvarint n]` then ts, min, max, sum, count, last as pcodec streams.
    RollupPco = 3,
    /// `[uvarint n][uvarint ts_offset][uvarint ts_len][bytes values]`: values as pcodec, the
    /// timestamps in a pcodec stream stored once per block at `ts_offset` in the chunks file
    /// and shared by every series with the same timestamps (all series of one agent).
    PcoSharedTs = 4,
    /// A short rollup chunk: `[uvarint n]` then per point `[varint ts − previous ts]`
    /// `[f64 LE min][f64 LE max][f64 LE sum][uvarint count][f64 LE last]` (the first delta is
    /// from 0). Chunks of fewer than [`ROLLUP_PLAIN_MAX`] points use it: pcodec's six
    /// stream headers cost more than they save there, and it decodes without setup.
    RollupPlain = 5,
    /// [`Encoding::RollupPco`] followed by five more pcodec columns: `ts − first_ts`,
    /// `first`, `ts − last_ts`, `resets` and `stale_end` (0 or 1).
    RollupPcoEdges = 6,
    /// [`Encoding::RollupPlain`] with each point followed by `[varint ts − first_ts]`
    /// `[f64 LE first][varint ts − last_ts][f64 LE resets][u8 stale_end]`.
    RollupPlainEdges = 7,
    /// [`Encoding::RollupPcoEdges`]'s eleven columns, each `[u8 0][bytes stream]` (inline) or
    /// `[u8 1][uvarint offset][uvarint len]`: a stream stored once in the block's chunks file
    /// (with its CRC, like shared timestamps) and shared by every chunk with the same column.
    /// The bucket times, counts, edge offsets, all-zero resets and staleness flags are shared
    /// (alike for every series scraped alike), so a reader of one value decodes one pcodec
    /// stream per series, not three or more.
    RollupPcoShared = 8,
    /// [`Encoding::PcoSharedTs`]'s layout with the values as a [`crate::decimal`] column
    /// (integers times a power of ten, bit-packed deltas) instead of pcodec: used where the
    /// values are short decimals, which decode about four times faster this way.
    DecimalSharedTs = 9,
}

/// Whether `enc` (a stored encoding byte) holds rollup points.
pub fn is_rollup(enc: u8) -> bool {
    matches!(
        Encoding::from_u8(enc),
        Some(
            Encoding::RollupPco
                | Encoding::RollupPlain
                | Encoding::RollupPcoEdges
                | Encoding::RollupPlainEdges
                | Encoding::RollupPcoShared
        )
    )
}

/// Rollup chunks with fewer points than this are stored as [`Encoding::RollupPlain`].
///
/// Plain points take ~61 bytes against pcodec columns' ~11, but decode without pcodec's
/// set-up per stream: with 16 here (measured 2026-11-29, 1,000 agents × 24 h), a day's newest
/// 2–4 h of 5 m rollups took 3–4× less space and range queries reading them got 1.2–1.6×
/// slower (range sum of rate over 8,000 series 84 → 133 ms p50).
pub const ROLLUP_PLAIN_MAX: usize = 64;

/// Most samples (or rollup points) one chunk may hold; a larger count in a chunk header is
/// damage. Writers cut chunks far below this ([`crate::Options::block_chunk_samples`], 2,160 by
/// default). The chunk's stored size bounds nothing: pcodec writes a constant column in a few
/// bytes whatever its length, so a flat gauge's six-hour chunk can be 30 bytes.
pub const MAX_CHUNK_SAMPLES: usize = 1 << 20;

fn check_count(n: usize, what: &str) -> Result<(), DecodeError> {
    if n > MAX_CHUNK_SAMPLES {
        return Err(DecodeError(format!(
            "implausible {what} count {n} (a chunk holds at most {MAX_CHUNK_SAMPLES})"
        )));
    }
    Ok(())
}

impl Encoding {
    /// Parses the stored byte.
    pub fn from_u8(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::Xor),
            2 => Some(Self::Pco),
            3 => Some(Self::RollupPco),
            4 => Some(Self::PcoSharedTs),
            5 => Some(Self::RollupPlain),
            6 => Some(Self::RollupPcoEdges),
            7 => Some(Self::RollupPlainEdges),
            8 => Some(Self::RollupPcoShared),
            9 => Some(Self::DecimalSharedTs),
            _ => None,
        }
    }
}

/// A chunk that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("chunk does not decode: {0}")]
pub struct DecodeError(pub String);

/// One downsampled bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RollupPoint {
    /// End of the bucket, ms (aligned to the resolution): the point holds the samples in
    /// `(ts_ms − resolution, ts_ms]`, the left-open window PromQL ranges use.
    pub ts_ms: i64,
    /// Smallest value in the bucket (NaNs ignored unless all are NaN).
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Sum of values.
    pub sum: f64,
    /// Number of raw samples (staleness markers excluded).
    pub count: u32,
    /// Last value in the bucket.
    pub last: f64,
    /// Time of the first sample in the bucket (staleness markers excluded). Rollups written
    /// before buckets kept their edges decode with `i64::MIN` here and NaN in `first` and
    /// `resets`; their blocks are not marked `edges` and such points never answer queries
    /// that need these fields.
    pub first_ts: i64,
    /// First value in the bucket.
    pub first: f64,
    /// Time of the last sample in the bucket (staleness markers excluded).
    pub last_ts: i64,
    /// Counter-reset correction of the bucket, as `rate` makes it: the sum of every
    /// sample's predecessor where the value went down.
    pub resets: f64,
    /// Whether the bucket's newest sample is a staleness marker. A point whose bucket holds
    /// only staleness markers has `count` 0 (its other values mean nothing).
    pub stale_end: bool,
}

impl RollupPoint {
    /// The bucket holding the samples of `self` followed by those of `later` (same bucket,
    /// disjoint samples, `later`'s all newer).
    pub fn combine(&self, later: &RollupPoint) -> RollupPoint {
        if later.count == 0 {
            return RollupPoint {
                stale_end: later.stale_end,
                ..*self
            };
        }
        if self.count == 0 {
            return RollupPoint {
                ts_ms: self.ts_ms,
                ..*later
            };
        }
        // `rate`'s order: this part's resets, the step between the parts, then the later's.
        let mut resets = self.resets;
        if later.first < self.last {
            resets += self.last;
        }
        RollupPoint {
            ts_ms: self.ts_ms,
            min: self.min.min(later.min),
            max: self.max.max(later.max),
            sum: self.sum + later.sum,
            count: self.count.saturating_add(later.count),
            last: later.last,
            first_ts: self.first_ts,
            first: self.first,
            last_ts: later.last_ts,
            resets: resets + later.resets,
            stale_end: later.stale_end,
        }
    }

    /// A bucket ending at `end` holding one sample.
    pub fn of_sample(end: i64, t: i64, v: f64) -> RollupPoint {
        RollupPoint {
            ts_ms: end,
            min: v,
            max: v,
            sum: v,
            count: 1,
            last: v,
            first_ts: t,
            first: v,
            last_ts: t,
            resets: 0.0,
            stale_end: false,
        }
    }

    /// A bucket ending at `end` holding only staleness markers.
    pub fn only_stale(end: i64) -> RollupPoint {
        RollupPoint {
            ts_ms: end,
            min: f64::NAN,
            max: f64::NAN,
            sum: 0.0,
            count: 0,
            last: f64::NAN,
            first_ts: end,
            first: f64::NAN,
            last_ts: end,
            resets: 0.0,
            stale_end: true,
        }
    }

    /// Adds the next sample of the bucket (newer than every sample in it); staleness
    /// markers only mark the bucket as ending stale.
    pub fn push(&mut self, t: i64, v: f64) {
        if vigil_model::is_stale_marker(v) {
            self.stale_end = true;
            return;
        }
        if self.count == 0 {
            *self = RollupPoint::of_sample(self.ts_ms, t, v);
            return;
        }
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.sum += v;
        self.count += 1;
        if v < self.last {
            self.resets += self.last;
        }
        self.last = v;
        self.last_ts = t;
        self.stale_end = false;
    }
}

/// Edge fields of points decoded from rollups written before buckets kept them.
const NO_EDGES: (i64, f64, i64, f64) = (i64::MIN, f64::NAN, i64::MIN, f64::NAN);

/// Reusable buffers for encoding and decoding, so the hot loops allocate once.
#[derive(Debug, Default)]
pub struct Scratch {
    ts: Vec<i64>,
    vals: Vec<f64>,
}

fn pco_config() -> pco::ChunkConfig {
    pco::ChunkConfig::default()
}

/// Encodes `samples` (strictly increasing timestamps) as XOR into `out`.
pub fn encode_xor(samples: &[(i64, f64)], out: &mut Vec<u8>) {
    let mut a = XorAppender::new();
    for &(t, v) in samples {
        a.append(t, v);
    }
    out.extend_from_slice(a.bytes());
}

/// Encodes `samples` as two pcodec columns into `out`.
pub fn encode_pco(samples: &[(i64, f64)], s: &mut Scratch, out: &mut Vec<u8>) {
    s.ts.clear();
    s.vals.clear();
    s.ts.extend(samples.iter().map(|x| x.0));
    s.vals.extend(samples.iter().map(|x| x.1));
    put_uvarint(out, samples.len() as u64);
    for col in [pco_i64(&s.ts), pco_f64(&s.vals)] {
        put_bytes(out, &col);
    }
}

/// The timestamps of `samples` as one pcodec stream (for sharing between series).
pub fn encode_ts_column(samples: &[(i64, f64)], s: &mut Scratch) -> Vec<u8> {
    s.ts.clear();
    s.ts.extend(samples.iter().map(|x| x.0));
    pco_i64(&s.ts)
}

/// The values of `samples` as one pcodec stream.
pub fn encode_value_column(samples: &[(i64, f64)], s: &mut Scratch) -> Vec<u8> {
    s.vals.clear();
    s.vals.extend(samples.iter().map(|x| x.1));
    pco_f64(&s.vals)
}

/// Builds a [`Encoding::PcoSharedTs`] chunk.
pub fn encode_shared_ts(n: usize, ts_off: u64, ts_len: usize, values: &[u8], out: &mut Vec<u8>) {
    put_uvarint(out, n as u64);
    put_uvarint(out, ts_off);
    put_uvarint(out, ts_len as u64);
    put_bytes(out, values);
}

/// Parses a [`Encoding::PcoSharedTs`] chunk: (n, ts offset, ts length, values stream).
pub fn parse_shared_ts(buf: &[u8]) -> Result<(usize, u64, usize, &[u8]), DecodeError> {
    let mut r = Reader::new(buf);
    let bad = || DecodeError("shared-timestamp chunk header truncated".into());
    let n = r.uvarint().ok_or_else(bad)? as usize;
    let off = r.uvarint().ok_or_else(bad)?;
    let len = r.uvarint().ok_or_else(bad)?;
    let vals = r.bytes().ok_or_else(bad)?;
    check_count(n, "sample")?;
    let len = usize::try_from(len).map_err(|_| bad())?;
    Ok((n, off, len, vals))
}

/// Decodes a pcodec timestamp stream holding exactly `n` values.
pub fn decode_ts_column(buf: &[u8], n: usize) -> Result<Vec<i64>, DecodeError> {
    decompress_exact(buf, n, "timestamp")
}

/// Decodes the value column of a shared-timestamp chunk (`enc` is [`Encoding::PcoSharedTs`]
/// or [`Encoding::DecimalSharedTs`]) holding exactly `n` values; only the first `take` are
/// returned (as many more may be decoded as pcodec's batches of 256 cover).
pub fn decode_shared_values(
    enc: Encoding,
    buf: &[u8],
    n: usize,
    take: usize,
) -> Result<Vec<f64>, DecodeError> {
    if enc == Encoding::DecimalSharedTs {
        let mut out = Vec::new();
        crate::decimal::decode_prefix(buf, n, take, &mut out)
            .map_err(|e| DecodeError(e.to_string()))?;
        return Ok(out);
    }
    if take >= n {
        decode_value_column(buf, n)
    } else {
        decode_value_prefix(buf, n, take)
    }
}

/// The values of `samples` as a pcodec stream and, if they are short decimals, as a
/// [`crate::decimal`] column too (at most one value in 16 kept verbatim); the writer keeps one.
pub fn encode_value_columns(samples: &[(i64, f64)], s: &mut Scratch) -> (Vec<u8>, Option<Vec<u8>>) {
    let pco = encode_value_column(samples, s);
    let mut dec = Vec::new();
    // `encode_value_column` left the values in `s.vals`.
    let dec = crate::decimal::encode(&s.vals, 16, &mut dec).then_some(dec);
    (pco, dec)
}

/// Decodes a pcodec value stream holding exactly `n` values.
pub fn decode_value_column(buf: &[u8], n: usize) -> Result<Vec<f64>, DecodeError> {
    decompress_exact(buf, n, "value")
}

/// The first `k` (at most `n`) values of a pcodec value stream holding exactly `n`: only as
/// many are decoded as the batches of 256 covering them.
pub fn decode_value_prefix(buf: &[u8], n: usize, k: usize) -> Result<Vec<f64>, DecodeError> {
    let k = k.min(n);
    let err = |e: pco::errors::PcoError| DecodeError(format!("value column: {e}"));
    let (fd, rest) = pco::standalone::FileDecompressor::new(buf).map_err(err)?;
    let mut cd = match fd.chunk_decompressor::<f64, _>(rest).map_err(err)? {
        // One pcodec chunk holds the whole stream (ours never need more): read a prefix.
        pco::standalone::DecompressorItem::Chunk(cd) if cd.n() == n => cd,
        _ => {
            let mut all = decode_value_column(buf, n)?;
            all.truncate(k);
            return Ok(all);
        }
    };
    let mut dst = vec![0.0; k.div_ceil(256).saturating_mul(256).min(n)];
    let progress = cd.read(&mut dst).map_err(err)?;
    if progress.n_processed < dst.len() {
        return Err(DecodeError(format!(
            "value column ended after {} of {n} values",
            progress.n_processed
        )));
    }
    dst.truncate(k);
    Ok(dst)
}

/// Decompresses one pcodec stream that must hold exactly `n` numbers.
fn decompress_exact<T: pco::data_types::Number>(
    buf: &[u8],
    n: usize,
    what: &str,
) -> Result<Vec<T>, DecodeError> {
    let v = pco::standalone::simple_decompress::<T>(buf)
        .map_err(|e| DecodeError(format!("{what} column: {e}")))?;
    if v.len() != n {
        return Err(DecodeError(format!(
            "{what} column has {} values, header says {n}",
            v.len()
        )));
    }
    Ok(v)
}

fn pco_i64(v: &[i64]) -> Vec<u8> {
    // Compressing a valid slice with the default config cannot fail; an empty stream decodes
    // to a length mismatch that the reader reports.
    pco::standalone::simple_compress(v, &pco_config()).unwrap_or_default()
}

/// The pcodec level of value columns: 4 rather than pcodec's default 8. On the reference
/// fleet's data a block's value columns come out 0.5 % larger and a series' samples decode
/// about a third faster: fewer bins mean smaller tables to build per chunk, and building them
/// is most of the cost for chunks of a few thousand samples.
const VALUE_LEVEL: usize = 4;

fn pco_f64(v: &[f64]) -> Vec<u8> {
    let config = pco_config().with_compression_level(VALUE_LEVEL);
    pco::standalone::simple_compress(v, &config).unwrap_or_default()
}

fn pco_u32(v: &[u32]) -> Vec<u8> {
    pco::standalone::simple_compress(v, &pco_config()).unwrap_or_default()
}

fn decode_col<T: pco::data_types::Number>(
    r: &mut Reader<'_>,
    n: usize,
    what: &str,
) -> Result<Vec<T>, DecodeError> {
    let b = r
        .bytes()
        .ok_or_else(|| DecodeError(format!("{what} column truncated")))?;
    decompress_exact(b, n, what)
}

/// Decodes a raw-sample chunk, appending to `out`.
pub fn decode(enc: Encoding, buf: &[u8], out: &mut Vec<(i64, f64)>) -> Result<(), DecodeError> {
    match enc {
        Encoding::Xor => decode_xor(buf, out).map_err(|e| DecodeError(e.to_string())),
        Encoding::Pco => {
            let mut r = Reader::new(buf);
            let n = r
                .uvarint()
                .ok_or_else(|| DecodeError("missing sample count".into()))?
                as usize;
            check_count(n, "sample")?;
            let ts: Vec<i64> = decode_col(&mut r, n, "timestamp")?;
            let vals: Vec<f64> = decode_col(&mut r, n, "value")?;
            out.extend(ts.into_iter().zip(vals));
            Ok(())
        }
        Encoding::RollupPco
        | Encoding::RollupPlain
        | Encoding::RollupPcoEdges
        | Encoding::RollupPlainEdges
        | Encoding::RollupPcoShared => Err(DecodeError("rollup chunk read as raw samples".into())),
        Encoding::PcoSharedTs | Encoding::DecimalSharedTs => {
            Err(DecodeError("shared-timestamp chunk needs its block".into()))
        }
    }
}

/// Encodes rollup points ([`Encoding::RollupPcoEdges`]).
pub fn encode_rollup(points: &[RollupPoint], out: &mut Vec<u8>) {
    put_uvarint(out, points.len() as u64);
    for col in rollup_columns(points) {
        put_bytes(out, &col);
    }
}

/// Columns of a pcodec rollup chunk, in stored order.
pub const ROLLUP_COLUMNS: usize = 11;
const C_TS: usize = 0;
const C_COUNT: usize = 4;
const C_FIRST_OFF: usize = 6;
const C_LAST_OFF: usize = 8;
const C_RESETS: usize = 9;
const C_STALE: usize = 10;

/// The pcodec streams of `points`' eleven columns: ts, min, max, sum, count, last,
/// `ts − first_ts`, first, `ts − last_ts`, resets, stale_end (0 or 1).
pub fn rollup_columns(points: &[RollupPoint]) -> [Vec<u8>; ROLLUP_COLUMNS] {
    let i64s = |f: fn(&RollupPoint) -> i64| pco_i64(&points.iter().map(f).collect::<Vec<_>>());
    let f64s = |f: fn(&RollupPoint) -> f64| pco_f64(&points.iter().map(f).collect::<Vec<_>>());
    let u32s = |f: fn(&RollupPoint) -> u32| pco_u32(&points.iter().map(f).collect::<Vec<_>>());
    [
        i64s(|p| p.ts_ms),
        f64s(|p| p.min),
        f64s(|p| p.max),
        f64s(|p| p.sum),
        u32s(|p| p.count),
        f64s(|p| p.last),
        i64s(|p| p.ts_ms.wrapping_sub(p.first_ts)),
        f64s(|p| p.first),
        i64s(|p| p.ts_ms.wrapping_sub(p.last_ts)),
        f64s(|p| p.resets),
        u32s(|p| u32::from(p.stale_end)),
    ]
}

/// Whether column `i` of `points` (see [`rollup_columns`]) is worth storing once per block:
/// bucket times, counts, edge offsets and staleness flags are alike for series scraped alike;
/// resets only when there are none (counters that reset are each their own).
pub fn rollup_column_shareable(i: usize, points: &[RollupPoint]) -> bool {
    match i {
        C_TS | C_COUNT | C_FIRST_OFF | C_LAST_OFF | C_STALE => true,
        C_RESETS => points.iter().all(|p| p.resets.to_bits() == 0),
        _ => false,
    }
}

/// Where a column of a pcodec rollup chunk is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RollupColumn<'a> {
    /// In the chunk: its pcodec stream.
    Inline(&'a [u8]),
    /// Stored once in the block's chunks file at this offset, this many bytes (CRC after).
    Shared {
        /// Offset in the chunks file.
        off: u64,
        /// Stream length.
        len: usize,
    },
    /// Not stored (the chunk predates the column).
    Absent,
}

/// Builds an [`Encoding::RollupPcoShared`] chunk of `n` points from its columns.
pub fn encode_rollup_shared(n: usize, cols: &[RollupColumn<'_>], out: &mut Vec<u8>) {
    put_uvarint(out, n as u64);
    for c in cols {
        match *c {
            RollupColumn::Inline(b) => {
                out.push(0);
                put_bytes(out, b);
            }
            RollupColumn::Shared { off, len } => {
                out.push(1);
                put_uvarint(out, off);
                put_uvarint(out, len as u64);
            }
            // Never written: every column is stored one way or the other.
            RollupColumn::Absent => {
                out.push(0);
                put_bytes(out, &[]);
            }
        }
    }
}

/// Parses a pcodec rollup chunk stored as `enc` ([`Encoding::RollupPco`],
/// [`Encoding::RollupPcoEdges`] or [`Encoding::RollupPcoShared`]): its point count and where
/// each of its [`ROLLUP_COLUMNS`] columns is.
pub fn parse_rollup_columns(
    enc: Encoding,
    buf: &[u8],
) -> Result<(usize, [RollupColumn<'_>; ROLLUP_COLUMNS]), DecodeError> {
    let mut r = Reader::new(buf);
    let n = r
        .uvarint()
        .ok_or_else(|| DecodeError("missing point count".into()))? as usize;
    check_count(n, "point")?;
    let stored = match enc {
        Encoding::RollupPco => 6,
        Encoding::RollupPcoEdges | Encoding::RollupPcoShared => ROLLUP_COLUMNS,
        e => {
            return Err(DecodeError(format!(
                "{e:?} is not a pcodec rollup encoding"
            )));
        }
    };
    let mut cols = [RollupColumn::Absent; ROLLUP_COLUMNS];
    for (i, c) in cols.iter_mut().enumerate().take(stored) {
        let truncated = || DecodeError(format!("rollup column {i} truncated"));
        let shared = enc == Encoding::RollupPcoShared
            && match r.u8().ok_or_else(truncated)? {
                0 => false,
                1 => true,
                t => return Err(DecodeError(format!("rollup column {i}: bad tag {t}"))),
            };
        *c = if shared {
            let off = r.uvarint().ok_or_else(truncated)?;
            let len =
                usize::try_from(r.uvarint().ok_or_else(truncated)?).map_err(|_| truncated())?;
            RollupColumn::Shared { off, len }
        } else {
            RollupColumn::Inline(r.bytes().ok_or_else(truncated)?)
        };
    }
    Ok((n, cols))
}

/// Whether a reader of `fields` needs column `i` (time and count always).
pub fn rollup_column_needed(i: usize, fields: RollupFields) -> bool {
    let need = [
        RollupFields::NONE,
        RollupFields::MIN,
        RollupFields::MAX,
        RollupFields::SUM,
        RollupFields::NONE,
        RollupFields::LAST,
        RollupFields::FIRST,
        RollupFields::FIRST,
        RollupFields::LAST_TS,
        RollupFields::RESETS,
        RollupFields::STALE,
    ];
    need.get(i).is_some_and(|&f| fields.has(f))
}

/// Decodes column `i`'s pcodec stream of exactly `n` values, each as its i64 bit pattern
/// (floats by their bits, counts and flags widened).
pub fn decode_rollup_column(i: usize, buf: &[u8], n: usize) -> Result<Vec<i64>, DecodeError> {
    const NAMES: [&str; ROLLUP_COLUMNS] = [
        "timestamp",
        "min",
        "max",
        "sum",
        "count",
        "last",
        "first time",
        "first",
        "last time",
        "resets",
        "stale flag",
    ];
    let what = NAMES.get(i).copied().unwrap_or("rollup");
    Ok(match i {
        C_TS | C_FIRST_OFF | C_LAST_OFF => decompress_exact::<i64>(buf, n, what)?,
        C_COUNT | C_STALE => decompress_exact::<u32>(buf, n, what)?
            .into_iter()
            .map(i64::from)
            .collect(),
        _ => decompress_exact::<f64>(buf, n, what)?
            .into_iter()
            .map(|v| v.to_bits() as i64)
            .collect(),
    })
}

/// Appends `n` points from decoded columns (see [`decode_rollup_column`]; `None` for those
/// not read: NaN, or the no-edges values). The time and count columns must be there.
pub fn assemble_rollup(
    n: usize,
    cols: &[Option<&[i64]>; ROLLUP_COLUMNS],
    out: &mut Vec<RollupPoint>,
) -> Result<(), DecodeError> {
    if let Some((i, c)) = cols
        .iter()
        .enumerate()
        .find_map(|(i, c)| c.filter(|c| c.len() != n).map(|c| (i, c)))
    {
        return Err(DecodeError(format!(
            "rollup column {i} has {} values, header says {n}",
            c.len()
        )));
    }
    let (Some(ts), Some(count)) = (cols[C_TS], cols[C_COUNT]) else {
        return Err(DecodeError("rollup time or count column missing".into()));
    };
    if let Some(c) = count.iter().find(|&&c| u32::try_from(c).is_err()) {
        return Err(DecodeError(format!("rollup count {c} out of range")));
    }
    if cols[C_STALE].is_some_and(|s| s.iter().any(|&b| !(0..=1).contains(&b))) {
        return Err(DecodeError(
            "rollup stale flag column holds a value other than 0 or 1".into(),
        ));
    }
    let float =
        |c: usize, i: usize, none: f64| cols[c].map_or(none, |c| f64::from_bits(c[i] as u64));
    let nan = f64::NAN;
    out.extend((0..n).map(|i| RollupPoint {
        ts_ms: ts[i],
        min: float(1, i, nan),
        max: float(2, i, nan),
        sum: float(3, i, nan),
        count: count[i] as u32,
        last: float(5, i, nan),
        first_ts: cols[C_FIRST_OFF].map_or(NO_EDGES.0, |c| ts[i].wrapping_sub(c[i])),
        first: float(7, i, NO_EDGES.1),
        last_ts: cols[C_LAST_OFF].map_or(NO_EDGES.2, |c| ts[i].wrapping_sub(c[i])),
        resets: float(C_RESETS, i, NO_EDGES.3),
        stale_end: cols[C_STALE].is_some_and(|c| c[i] == 1),
    }));
    Ok(())
}

/// Encodes a few rollup points plainly ([`Encoding::RollupPlainEdges`]).
pub fn encode_rollup_plain(points: &[RollupPoint], out: &mut Vec<u8>) {
    put_uvarint(out, points.len() as u64);
    let mut prev = 0i64;
    for p in points {
        put_varint(out, p.ts_ms.wrapping_sub(prev));
        prev = p.ts_ms;
        for f in [p.min, p.max, p.sum] {
            out.extend_from_slice(&f.to_le_bytes());
        }
        put_uvarint(out, u64::from(p.count));
        out.extend_from_slice(&p.last.to_le_bytes());
        put_varint(out, p.ts_ms.wrapping_sub(p.first_ts));
        out.extend_from_slice(&p.first.to_le_bytes());
        put_varint(out, p.ts_ms.wrapping_sub(p.last_ts));
        out.extend_from_slice(&p.resets.to_le_bytes());
        out.push(u8::from(p.stale_end));
    }
}

/// Decodes rollup points stored as `enc`, appending to `out`.
pub fn decode_rollup_as(
    enc: u8,
    buf: &[u8],
    out: &mut Vec<RollupPoint>,
) -> Result<(), DecodeError> {
    decode_rollup_fields(enc, buf, RollupFields::ALL, out)
}

/// [`decode_rollup_as`] decoding only the values in `fields` where that saves work
/// (pcodec columns); plain chunks are decoded whole.
pub fn decode_rollup_fields(
    enc: u8,
    buf: &[u8],
    fields: RollupFields,
    out: &mut Vec<RollupPoint>,
) -> Result<(), DecodeError> {
    let edges = match Encoding::from_u8(enc) {
        Some(Encoding::RollupPlain) => false,
        Some(Encoding::RollupPlainEdges) => true,
        Some(e @ (Encoding::RollupPco | Encoding::RollupPcoEdges | Encoding::RollupPcoShared)) => {
            return decode_rollup_columns(e, buf, fields, out);
        }
        _ => {
            return Err(DecodeError(format!(
                "encoding {enc} is not a rollup encoding"
            )));
        }
    };
    let mut r = Reader::new(buf);
    let bad = |what: &str| DecodeError(format!("plain rollup chunk: truncated {what}"));
    // At least 34 (53 with edges) bytes per point: the count is bounded by the input.
    let n = r
        .count(if edges { 53 } else { 34 })
        .ok_or_else(|| bad("point count"))?;
    out.reserve(n);
    let mut ts = 0i64;
    for _ in 0..n {
        ts = ts.wrapping_add(r.varint().ok_or_else(|| bad("timestamp"))?);
        let mut f = || r.u64_le().map(f64::from_bits).ok_or_else(|| bad("value"));
        let (min, max, sum) = (f()?, f()?, f()?);
        let count = r.uvarint().ok_or_else(|| bad("count"))?;
        let count = u32::try_from(count)
            .map_err(|_| DecodeError(format!("plain rollup chunk: count {count} too large")))?;
        let last = r.u64_le().map(f64::from_bits).ok_or_else(|| bad("last"))?;
        let (first_ts, first, last_ts, resets, stale_end) = if edges {
            let first_ts = ts.wrapping_sub(r.varint().ok_or_else(|| bad("first time"))?);
            let first = r.u64_le().map(f64::from_bits).ok_or_else(|| bad("first"))?;
            let last_ts = ts.wrapping_sub(r.varint().ok_or_else(|| bad("last time"))?);
            let resets = r
                .u64_le()
                .map(f64::from_bits)
                .ok_or_else(|| bad("resets"))?;
            let stale = match r.u8().ok_or_else(|| bad("stale flag"))? {
                0 => false,
                1 => true,
                b => return Err(DecodeError(format!("plain rollup chunk: stale flag {b}"))),
            };
            (first_ts, first, last_ts, resets, stale)
        } else {
            (NO_EDGES.0, NO_EDGES.1, NO_EDGES.2, NO_EDGES.3, false)
        };
        out.push(RollupPoint {
            ts_ms: ts,
            min,
            max,
            sum,
            count,
            last,
            first_ts,
            first,
            last_ts,
            resets,
            stale_end,
        });
    }
    Ok(())
}

/// Which values of rollup points a reader needs; pcodec columns of the others are skipped
/// (left NaN, or 0 / `i64::MIN` / false) instead of decoded. The time and count are always
/// decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RollupFields(u8);

impl RollupFields {
    /// `min`.
    pub const MIN: Self = Self(1);
    /// `max`.
    pub const MAX: Self = Self(2);
    /// `sum`.
    pub const SUM: Self = Self(4);
    /// `last`.
    pub const LAST: Self = Self(8);
    /// `first_ts` and `first`.
    pub const FIRST: Self = Self(16);
    /// `last_ts`.
    pub const LAST_TS: Self = Self(32);
    /// `resets`.
    pub const RESETS: Self = Self(64);
    /// `stale_end`.
    pub const STALE: Self = Self(128);
    /// Every value.
    pub const ALL: Self = Self(255);
    /// Only the time and count.
    pub const NONE: Self = Self(0);

    /// Both sets.
    pub const fn with(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// Whether every value of `other` is in this set.
    pub const fn has(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

/// Decodes [`Encoding::RollupPcoEdges`] points, appending to `out`.
pub fn decode_rollup(buf: &[u8], out: &mut Vec<RollupPoint>) -> Result<(), DecodeError> {
    decode_rollup_columns(Encoding::RollupPcoEdges, buf, RollupFields::ALL, out)
}

/// Decodes a pcodec rollup chunk with every column inline, the values in `fields` only,
/// appending to `out`.
fn decode_rollup_columns(
    enc: Encoding,
    buf: &[u8],
    fields: RollupFields,
    out: &mut Vec<RollupPoint>,
) -> Result<(), DecodeError> {
    let (n, cols) = parse_rollup_columns(enc, buf)?;
    let mut decoded: [Option<Vec<i64>>; ROLLUP_COLUMNS] = Default::default();
    for (i, c) in cols.iter().enumerate() {
        match *c {
            RollupColumn::Inline(b) if rollup_column_needed(i, fields) => {
                decoded[i] = Some(decode_rollup_column(i, b, n)?);
            }
            RollupColumn::Shared { .. } => {
                return Err(DecodeError(
                    "rollup chunk with shared columns needs its block".into(),
                ));
            }
            _ => {}
        }
    }
    assemble_rollup(n, &decoded.each_ref().map(|c| c.as_deref()), out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bits(v: &[(i64, f64)]) -> Vec<(i64, u64)> {
        v.iter().map(|&(t, v)| (t, v.to_bits())).collect()
    }

    #[test]
    fn pco_keeps_nan_payloads_and_signed_zero() {
        let mut s: Vec<(i64, f64)> = (0..100).map(|i| (i * 10_000, (i as f64) * 0.01)).collect();
        s[3].1 = vigil_model::stale_marker();
        s[4].1 = -0.0;
        s[5].1 = f64::NAN;
        s[6].1 = f64::NEG_INFINITY;
        let mut out = Vec::new();
        encode_pco(&s, &mut Scratch::default(), &mut out);
        let mut back = Vec::new();
        decode(Encoding::Pco, &out, &mut back).unwrap();
        assert_eq!(bits(&back), bits(&s));
    }

    #[test]
    fn value_prefixes_match_the_whole_column() {
        for n in [1usize, 200, 256, 700, 2160] {
            let s: Vec<(i64, f64)> = (0..n as i64)
                .map(|i| (i * 10_000, ((i * 37) % 101) as f64 * 0.25))
                .collect();
            let col = encode_value_column(&s, &mut Scratch::default());
            let all = decode_value_column(&col, n).unwrap();
            for k in [0, 1, 255, 256, 257, 600, n - 1, n, n + 5] {
                let p = decode_value_prefix(&col, n, k).unwrap();
                assert_eq!(p.len(), k.min(n), "n {n} k {k}");
                assert!(p.iter().zip(&all).all(|(a, b)| a.to_bits() == b.to_bits()));
            }
            // A stream shorter than its header says is an error, not a panic.
            assert!(decode_value_prefix(&col[..col.len() / 2], n, n).is_err());
        }
    }

    #[test]
    fn shared_ts_columns_roundtrip() {
        let s: Vec<(i64, f64)> = (0..2000)
            .map(|i| (i * 10_000 + (i * 7919) % 11, ((i * 31) % 97) as f64 * 0.37))
            .collect();
        let mut sc = Scratch::default();
        let ts = encode_ts_column(&s, &mut sc);
        let vals = encode_value_column(&s, &mut sc);
        let mut out = Vec::new();
        encode_shared_ts(s.len(), 1234, ts.len(), &vals, &mut out);
        let (n, off, len, v) = parse_shared_ts(&out).unwrap();
        assert_eq!((n, off, len), (2000, 1234, ts.len()));
        let t = decode_ts_column(&ts, n).unwrap();
        let v = decode_value_column(v, n).unwrap();
        let back: Vec<(i64, f64)> = t.into_iter().zip(v).collect();
        assert_eq!(bits(&back), bits(&s));
        assert!(decode_ts_column(&ts, n + 1).is_err());
    }

    /// A flat series compresses to a few bytes whatever its length: its chunks must read
    /// back (a size-based plausibility check once refused a six-hour chunk of a constant
    /// gauge and stopped store maintenance).
    #[test]
    fn constant_columns_of_full_chunks_read_back() {
        let n = 2160;
        let s: Vec<(i64, f64)> = (0..n as i64).map(|i| (i * 10_000, 0.0)).collect();
        let mut sc = Scratch::default();
        let vals = encode_value_column(&s, &mut sc);
        let mut out = Vec::new();
        encode_shared_ts(n, 0, 0, &vals, &mut out);
        assert!(
            vals.len() * 64 + 64 < n,
            "the column should be tiny: {} bytes",
            vals.len()
        );
        let (m, _, _, v) = parse_shared_ts(&out).unwrap();
        assert_eq!(m, n);
        assert_eq!(decode_value_column(v, n).unwrap(), vec![0.0; n]);

        let mut out = Vec::new();
        encode_pco(&s, &mut sc, &mut out);
        let mut back = Vec::new();
        decode(Encoding::Pco, &out, &mut back).unwrap();
        assert_eq!(bits(&back), bits(&s));

        let pts: Vec<RollupPoint> = (0..n as i64)
            .map(|i| RollupPoint {
                ts_ms: i * 300_000,
                min: 1.0,
                max: 1.0,
                sum: 30.0,
                count: 30,
                last: 1.0,
                first_ts: i * 300_000 - 290_000,
                first: 1.0,
                last_ts: i * 300_000,
                resets: 0.0,
                stale_end: false,
            })
            .collect();
        let mut out = Vec::new();
        encode_rollup(&pts, &mut out);
        let mut back = Vec::new();
        decode_rollup(&out, &mut back).unwrap();
        assert_eq!(back.len(), n);

        // A damaged count is still refused before anything is allocated for it.
        let mut bad = Vec::new();
        encode_shared_ts(MAX_CHUNK_SAMPLES + 1, 0, 0, &vals, &mut bad);
        assert!(parse_shared_ts(&bad).is_err());
        let mut bad = Vec::new();
        put_uvarint(&mut bad, u64::MAX);
        assert!(decode(Encoding::Pco, &bad, &mut Vec::new()).is_err());
    }

    #[test]
    fn rollup_roundtrip() {
        let pts: Vec<RollupPoint> = (0..50)
            .map(|i| RollupPoint {
                ts_ms: i * 300_000,
                min: i as f64,
                max: i as f64 + 2.0,
                sum: 30.0,
                count: 30,
                last: 1.5,
                first_ts: i * 300_000 - 290_000,
                first: 0.5,
                last_ts: i * 300_000 - (i % 3) * 10_000,
                resets: (i % 4) as f64 * 7.0,
                stale_end: i % 5 == 0,
            })
            .collect();
        let mut out = Vec::new();
        encode_rollup(&pts, &mut out);
        let mut back = Vec::new();
        decode_rollup_as(Encoding::RollupPcoEdges as u8, &out, &mut back).unwrap();
        assert_eq!(back, pts);
        out.clear();
        back.clear();
        encode_rollup_plain(&pts, &mut out);
        decode_rollup_as(Encoding::RollupPlainEdges as u8, &out, &mut back).unwrap();
        assert_eq!(back, pts);
        // Truncated anywhere: an error, never a panic or a partial point.
        for cut in 0..out.len() {
            let mut part = Vec::new();
            let r = decode_rollup_as(Encoding::RollupPlainEdges as u8, &out[..cut], &mut part);
            assert!(r.is_err());
        }
        // Decoding some values only: those equal, the rest left out.
        out.clear();
        encode_rollup(&pts, &mut out);
        let want = RollupFields::MAX.with(RollupFields::RESETS);
        let mut some = Vec::new();
        decode_rollup_fields(Encoding::RollupPcoEdges as u8, &out, want, &mut some).unwrap();
        for (a, b) in some.iter().zip(&pts) {
            assert_eq!(
                (a.ts_ms, a.count, a.max, a.resets),
                (b.ts_ms, b.count, b.max, b.resets)
            );
            assert!(a.min.is_nan() && a.sum.is_nan() && a.first.is_nan());
            assert_eq!((a.first_ts, a.stale_end), (i64::MIN, false));
        }
        // A raw-sample encoding is refused.
        assert!(decode_rollup_as(Encoding::Xor as u8, &out, &mut back).is_err());
    }

    #[test]
    fn rollups_written_before_edges_still_decode() {
        // The plain layout without edges: ts delta, min, max, sum, count, last.
        let mut old = Vec::new();
        put_uvarint(&mut old, 2);
        for (d, v) in [(300_000i64, 1.0f64), (300_000, 2.0)] {
            put_varint(&mut old, d);
            for f in [v, v + 1.0, v * 3.0] {
                old.extend_from_slice(&f.to_le_bytes());
            }
            put_uvarint(&mut old, 3);
            old.extend_from_slice(&v.to_le_bytes());
        }
        let mut back = Vec::new();
        decode_rollup_as(Encoding::RollupPlain as u8, &old, &mut back).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(
            (back[1].ts_ms, back[1].max, back[1].count),
            (600_000, 3.0, 3)
        );
        assert_eq!((back[1].first_ts, back[1].last_ts), (i64::MIN, i64::MIN));
        assert!(back[1].resets.is_nan() && !back[1].stale_end);
    }

    #[test]
    fn buckets_combine_like_one_bucket() {
        // Samples of one bucket, split anywhere into two parts, combine into the point the
        // whole bucket makes: resets across the split included, a trailing marker kept.
        let st = vigil_model::stale_marker();
        let samples = [
            (1, 5.0),
            (2, 7.0),
            (3, 2.0),
            (4, st),
            (5, 9.0),
            (6, 1.0),
            (7, st),
        ];
        let build = |part: &[(i64, f64)]| {
            let mut p: Option<RollupPoint> = None;
            for &(t, v) in part {
                match p.as_mut() {
                    Some(p) => p.push(t, v),
                    None if vigil_model::is_stale_marker(v) => {
                        p = Some(RollupPoint::only_stale(10))
                    }
                    None => p = Some(RollupPoint::of_sample(10, t, v)),
                }
            }
            p
        };
        let whole = build(&samples).unwrap();
        assert_eq!(
            (whole.count, whole.resets, whole.stale_end),
            (5, 7.0 + 9.0, true)
        );
        assert_eq!((whole.first_ts, whole.last_ts, whole.last), (1, 6, 1.0));
        for cut in 1..samples.len() {
            let (a, b) = samples.split_at(cut);
            let got = build(a).unwrap().combine(&build(b).unwrap());
            let key = |p: &RollupPoint| {
                (
                    p.count,
                    p.first_ts,
                    p.first.to_bits(),
                    p.last_ts,
                    p.last.to_bits(),
                    p.resets.to_bits(),
                    p.stale_end,
                    p.max.to_bits(),
                )
            };
            assert_eq!(key(&got), key(&whole), "split at {cut}");
        }
    }

    /// Encodes points as [`Encoding::RollupPcoShared`] with its shareable columns kept apart
    /// (keyed by a made-up offset), as a block writer does.
    fn encode_with_shared(pts: &[RollupPoint]) -> (Vec<u8>, Vec<(u64, Vec<u8>)>) {
        let cols = rollup_columns(pts);
        let mut store = Vec::new();
        let mut refs = [RollupColumn::Absent; ROLLUP_COLUMNS];
        for (i, c) in cols.iter().enumerate() {
            refs[i] = if rollup_column_shareable(i, pts) {
                store.push((1000 + i as u64, c.clone()));
                RollupColumn::Shared {
                    off: 1000 + i as u64,
                    len: c.len(),
                }
            } else {
                RollupColumn::Inline(c)
            };
        }
        let mut out = Vec::new();
        encode_rollup_shared(pts.len(), &refs, &mut out);
        (out, store)
    }

    /// Reads what [`encode_with_shared`] wrote, as a block reader does.
    fn decode_with_shared(
        buf: &[u8],
        store: &[(u64, Vec<u8>)],
        fields: RollupFields,
    ) -> Result<Vec<RollupPoint>, DecodeError> {
        let (n, cols) = parse_rollup_columns(Encoding::RollupPcoShared, buf)?;
        let mut decoded: [Option<Vec<i64>>; ROLLUP_COLUMNS] = Default::default();
        for (i, c) in cols.iter().enumerate() {
            if !rollup_column_needed(i, fields) {
                continue;
            }
            decoded[i] = match *c {
                RollupColumn::Inline(b) => Some(decode_rollup_column(i, b, n)?),
                RollupColumn::Shared { off, len } => {
                    let (_, b) = store.iter().find(|(o, _)| *o == off).unwrap();
                    assert_eq!(b.len(), len);
                    Some(decode_rollup_column(i, b, n)?)
                }
                RollupColumn::Absent => None,
            };
        }
        let mut out = Vec::new();
        assemble_rollup(n, &decoded.each_ref().map(|c| c.as_deref()), &mut out)?;
        Ok(out)
    }

    #[test]
    fn shared_rollup_columns_read_only_what_is_asked_and_refuse_bad_columns() {
        let pts: Vec<RollupPoint> = (0..100i64)
            .map(|i| RollupPoint {
                ts_ms: (i + 1) * 300_000,
                min: i as f64,
                max: i as f64 + 2.0,
                sum: 3.0 * i as f64 + 3.0,
                count: 3,
                last: i as f64 + 1.0,
                first_ts: i * 300_000 + 10_000,
                first: i as f64,
                last_ts: (i + 1) * 300_000 - 10_000,
                resets: 0.0,
                stale_end: i == 7,
            })
            .collect();
        let (out, store) = encode_with_shared(&pts);
        // Time, count, both edge offsets, the all-zero resets and staleness are shared.
        assert_eq!(store.len(), 6);
        let some = decode_with_shared(&out, &store, RollupFields::MAX).unwrap();
        for (a, b) in some.iter().zip(&pts) {
            assert_eq!((a.ts_ms, a.count, a.max), (b.ts_ms, b.count, b.max));
            assert!(a.min.is_nan() && a.sum.is_nan() && a.last.is_nan());
            assert_eq!((a.first_ts, a.stale_end), (i64::MIN, false));
        }
        // Without its block a chunk with shared columns is refused, not misread.
        let mut back = Vec::new();
        let e = decode_rollup_as(Encoding::RollupPcoShared as u8, &out, &mut back).unwrap_err();
        assert!(e.0.contains("needs its block"), "{e}");
        assert!(back.is_empty());
        // A bad column tag names the column.
        let mut bad = out.clone();
        let tag_at = {
            let mut r = Reader::new(&bad);
            r.uvarint().unwrap();
            r.pos()
        };
        bad[tag_at] = 7;
        let e = parse_rollup_columns(Encoding::RollupPcoShared, &bad).unwrap_err();
        assert!(e.0.contains("column 0: bad tag 7"), "{e}");
        // Columns that do not fit the points are refused by name.
        let ts: Vec<i64> = (0..3).collect();
        let count = vec![1i64, 2, 3];
        let mut cols: [Option<&[i64]>; ROLLUP_COLUMNS] = [None; ROLLUP_COLUMNS];
        cols[C_TS] = Some(&ts);
        cols[C_COUNT] = Some(&count);
        let mut out = Vec::new();
        assert!(assemble_rollup(3, &cols, &mut out).is_ok());
        let short = [1i64, 2];
        cols[3] = Some(&short);
        let e = assemble_rollup(3, &cols, &mut out).unwrap_err();
        assert!(e.0.contains("column 3 has 2 values"), "{e}");
        cols[3] = None;
        let flags = [0i64, 2, 1];
        cols[C_STALE] = Some(&flags);
        assert!(
            assemble_rollup(3, &cols, &mut out)
                .unwrap_err()
                .0
                .contains("stale flag")
        );
        cols[C_STALE] = None;
        let huge = [1i64, 1 << 40, 1];
        cols[C_COUNT] = Some(&huge);
        assert!(
            assemble_rollup(3, &cols, &mut out)
                .unwrap_err()
                .0
                .contains("count")
        );
        cols[C_COUNT] = None;
        assert!(
            assemble_rollup(3, &cols, &mut out)
                .unwrap_err()
                .0
                .contains("missing")
        );
        assert_eq!(out.len(), 3, "failed assemblies append nothing");
    }

    proptest! {
        #[test]
        fn xor_and_pco_roundtrip_any_series(
            deltas in proptest::collection::vec(1i64..100_000, 1..400),
            vals in proptest::collection::vec(prop_oneof![any::<u64>(), (0u64..1000).prop_map(|x| (x as f64 * 0.01).to_bits())], 400),
        ) {
            let mut t = 1_700_000_000_000i64;
            let s: Vec<(i64, f64)> = deltas.iter().enumerate().map(|(i, d)| { t += d; (t, f64::from_bits(vals[i])) }).collect();
            for enc in [Encoding::Xor, Encoding::Pco] {
                let mut out = Vec::new();
                match enc {
                    Encoding::Xor => encode_xor(&s, &mut out),
                    _ => encode_pco(&s, &mut Scratch::default(), &mut out),
                }
                let mut back = Vec::new();
                decode(enc, &out, &mut back).unwrap();
                prop_assert_eq!(bits(&back), bits(&s));
            }
        }

        #[test]
        fn rollups_roundtrip_bit_exact(
            pts in proptest::collection::vec(
                (
                    (any::<i64>(), any::<u64>(), any::<u64>(), any::<u64>(), any::<u32>(), any::<u64>()),
                    (any::<i64>(), any::<u64>(), any::<i64>(), any::<u64>(), any::<bool>()),
                ),
                0..80,
            ),
        ) {
            let pts: Vec<RollupPoint> = pts
                .into_iter()
                .map(|((ts_ms, a, b, c, count, d), (ft, f, lt, r, stale_end))| RollupPoint {
                    ts_ms,
                    min: f64::from_bits(a),
                    max: f64::from_bits(b),
                    sum: f64::from_bits(c),
                    count,
                    last: f64::from_bits(d),
                    first_ts: ft,
                    first: f64::from_bits(f),
                    last_ts: lt,
                    resets: f64::from_bits(r),
                    stale_end,
                })
                .collect();
            let key = |p: &RollupPoint| {
                (p.ts_ms, p.min.to_bits(), p.max.to_bits(), p.sum.to_bits(), p.count, p.last.to_bits(),
                 p.first_ts, p.first.to_bits(), p.last_ts, p.resets.to_bits(), p.stale_end)
            };
            for enc in [Encoding::RollupPlainEdges, Encoding::RollupPcoEdges] {
                let mut out = Vec::new();
                if enc == Encoding::RollupPlainEdges {
                    encode_rollup_plain(&pts, &mut out);
                } else {
                    encode_rollup(&pts, &mut out);
                }
                let mut back = Vec::new();
                decode_rollup_as(enc as u8, &out, &mut back).unwrap();
                prop_assert_eq!(back.iter().map(key).collect::<Vec<_>>(), pts.iter().map(key).collect::<Vec<_>>());
            }
            // Shared columns: stored apart, referenced by offset, read back the same.
            let (out, store) = encode_with_shared(&pts);
            let back = decode_with_shared(&out, &store, RollupFields::ALL).unwrap();
            prop_assert_eq!(back.iter().map(key).collect::<Vec<_>>(), pts.iter().map(key).collect::<Vec<_>>());
        }

        #[test]
        fn decode_never_panics(b in proptest::collection::vec(any::<u8>(), 0..300), e in 1u8..9) {
            let enc = Encoding::from_u8(e).unwrap();
            let mut out = Vec::new();
            let _ = decode(enc, &b, &mut out);
            let mut pts = Vec::new();
            let _ = decode_rollup(&b, &mut pts);
            let _ = decode_rollup_as(e, &b, &mut pts);
            let _ = parse_shared_ts(&b);
            let _ = decode_ts_column(&b, 3);
            let _ = decode_value_prefix(&b, 300, 20);
            if let Ok((n, cols)) = parse_rollup_columns(Encoding::RollupPcoShared, &b) {
                let decoded: Vec<Option<Vec<i64>>> = cols
                    .iter()
                    .enumerate()
                    .map(|(i, c)| match c {
                        RollupColumn::Inline(x) => decode_rollup_column(i, x, n).ok(),
                        _ => None,
                    })
                    .collect();
                let mut refs = [None; ROLLUP_COLUMNS];
                for (r, d) in refs.iter_mut().zip(&decoded) {
                    *r = d.as_deref();
                }
                let _ = assemble_rollup(n, &refs, &mut pts);
            }
        }
    }
}

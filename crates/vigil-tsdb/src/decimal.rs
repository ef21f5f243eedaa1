//! The decimal value column: floats that are short decimals, stored as integers.
//!
//! Most monitoring values are decimals with a few digits: load averages with two, byte
//! counters and gauges with none, percentages with one or two, because exporters print them
//! and Vigil parses the text. Such a column is stored as one scale `k` and the integers
//! `n = v·10^k`: the first as a varint, the rest as deltas bit-packed in groups of
//! [`GROUP`], each group holding its smallest delta and a bit width. Decoding is a shift, a
//! mask, an add and one division per value, several times faster than pcodec's entropy
//! decoder, which matters when a dashboard reads a day of one series.
//!
//! The encoding is lossless by construction: a value is stored as `n` only if the decoder's
//! own expression `n as f64 / 10^k` gives back exactly its bits (IEEE division is correctly
//! rounded, so every float printed with at most `k` decimals qualifies). Values that do not
//! (staleness markers, NaN, infinities, −0, integers beyond 2^53) are kept verbatim as
//! exceptions; a column with many of them is not encoded this way at all.
//!
//! Layout (docs/format/chunk.md, block encoding 9):
//!
//! ```text
//! u8       k                 scale: value = n / 10^k, k ≤ MAX_SCALE
//! uvarint  count             values (the chunk header's count, checked)
//! uvarint  e                 exceptions
//! e × ( uvarint position − previous position (the first from 0) · u64 LE bits )
//! varint   n₀                first integer (an exception's integer repeats the previous one)
//! per group of up to GROUP deltas nᵢ − nᵢ₋₁:
//!   varint base · u8 width w · ⌈len·w/8⌉ bytes of (delta − base), LSB first
//! ```
//!
//! Decoding takes untrusted bytes, bounds every count against the bytes left and never panics
//! (all integer arithmetic wraps).

use crate::encoding::{Reader, put_uvarint, put_varint};

/// Deltas per bit-packed group.
pub const GROUP: usize = 64;

/// Largest scale tried: 10^15 is the largest power of ten a double holds exactly.
pub const MAX_SCALE: u8 = 15;

/// Largest integer magnitude stored: every integer up to 2^53 converts to `f64` exactly.
const MAX_INT: f64 = 9_007_199_254_740_992.0;

const POW10: [f64; MAX_SCALE as usize + 1] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];

/// A decimal column that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("decimal column: {0}")]
pub struct DecimalError(pub String);

fn err(m: impl Into<String>) -> DecimalError {
    DecimalError(m.into())
}

/// The integer `v` is stored as at scale `k`, if the decoder gives `v` back from it bit for bit.
fn fit(v: f64, k: u8) -> Option<i64> {
    let p = POW10[k as usize];
    let n = (v * p).round();
    // `n.abs() <= MAX_INT` is false for NaN, so non-finite values never fit; −0 comes back
    // from the integer as +0, so it does not either.
    let i = n as i64;
    (n.abs() <= MAX_INT && (i as f64 / p).to_bits() == v.to_bits()).then_some(i)
}

/// The smallest scale at which `v` fits, if any.
fn min_scale(v: f64, from: u8) -> Option<u8> {
    (from..=MAX_SCALE).find(|&k| fit(v, k).is_some())
}

/// Encodes `vals` into `out` (appending) and returns true, or returns false (leaving `out` as
/// it was) when the column is not a decimal one: more than one value in `max_exceptions_div`
/// needs to be kept verbatim.
pub fn encode(vals: &[f64], max_exceptions_div: usize, out: &mut Vec<u8>) -> bool {
    let start = out.len();
    let limit = vals.len() / max_exceptions_div.max(1);
    // The scale: the largest of each value's smallest (values that fit at none are exceptions).
    let mut k = 0u8;
    let mut misfits = 0usize;
    for &v in vals {
        if fit(v, k).is_some() {
            continue;
        }
        match min_scale(v, k + 1) {
            Some(s) => k = s,
            None => {
                misfits += 1;
                if misfits > limit {
                    return false;
                }
            }
        }
    }
    // Integers at that scale; values that fit at a smaller scale can overflow 2^53 at it.
    let mut ints = Vec::with_capacity(vals.len());
    let mut exceptions: Vec<(usize, u64)> = Vec::new();
    let mut prev = 0i64;
    for (i, &v) in vals.iter().enumerate() {
        match fit(v, k) {
            Some(n) => {
                ints.push(n);
                prev = n;
            }
            None => {
                exceptions.push((i, v.to_bits()));
                if exceptions.len() > limit {
                    return false;
                }
                ints.push(prev);
            }
        }
    }
    out.push(k);
    put_uvarint(out, vals.len() as u64);
    put_uvarint(out, exceptions.len() as u64);
    let mut last = 0usize;
    for &(i, bits) in &exceptions {
        put_uvarint(out, (i - last) as u64);
        out.extend_from_slice(&bits.to_le_bytes());
        last = i;
    }
    let Some(&first) = ints.first() else {
        out.truncate(start);
        return false;
    };
    put_varint(out, first);
    let deltas: Vec<i64> = ints.windows(2).map(|w| w[1].wrapping_sub(w[0])).collect();
    for ds in deltas.chunks(GROUP) {
        let base = ds.iter().copied().min().unwrap_or(0);
        let span = ds
            .iter()
            .map(|&d| d.wrapping_sub(base) as u64)
            .max()
            .unwrap_or(0);
        let width = (64 - span.leading_zeros()) as u8;
        put_varint(out, base);
        out.push(width);
        pack(ds.iter().map(|&d| d.wrapping_sub(base) as u64), width, out);
    }
    true
}

/// Appends `xs` as `width`-bit fields, least significant bit first, padded to a byte.
fn pack(xs: impl Iterator<Item = u64>, width: u8, out: &mut Vec<u8>) {
    if width == 0 {
        return;
    }
    let mut acc: u128 = 0;
    let mut bits = 0u32;
    for x in xs {
        acc |= (x as u128) << bits;
        bits += width as u32;
        while bits >= 8 {
            out.push(acc as u8);
            acc >>= 8;
            bits -= 8;
        }
    }
    if bits > 0 {
        out.push(acc as u8);
    }
}

/// Decodes a column that must hold exactly `n` values, appending them to `out`.
pub fn decode(buf: &[u8], n: usize, out: &mut Vec<f64>) -> Result<(), DecimalError> {
    decode_prefix(buf, n, n, out)
}

/// Decodes the first `take` (at most `n`) values of a column holding exactly `n`, appending
/// them to `out`. The rest are not unpacked.
pub fn decode_prefix(
    buf: &[u8],
    n: usize,
    take: usize,
    out: &mut Vec<f64>,
) -> Result<(), DecimalError> {
    let before = out.len();
    let r = decode_into(buf, n, take.min(n), out);
    if r.is_err() {
        out.truncate(before);
    }
    r
}

fn decode_into(buf: &[u8], n: usize, take: usize, out: &mut Vec<f64>) -> Result<(), DecimalError> {
    let mut r = Reader::new(buf);
    let k = r.u8().ok_or_else(|| err("missing scale"))?;
    let p = *POW10
        .get(k as usize)
        .ok_or_else(|| err(format!("scale {k} is above {MAX_SCALE}")))?;
    let count = r.uvarint().ok_or_else(|| err("missing count"))?;
    if count != n as u64 {
        return Err(err(format!(
            "column holds {count} values, chunk header says {n}"
        )));
    }
    // Each exception takes at least 9 bytes.
    let e = r.count(9).ok_or_else(|| err("exception count too large"))?;
    if e > n {
        return Err(err(format!("{e} exceptions in {n} values")));
    }
    let mut exceptions = Vec::with_capacity(e);
    let mut pos = 0usize;
    for j in 0..e {
        let d = r.uvarint().ok_or_else(|| err("exception truncated"))?;
        pos = usize::try_from(d)
            .ok()
            .and_then(|d| pos.checked_add(d))
            .filter(|&p| p < n && (j == 0 || d > 0))
            .ok_or_else(|| err("exception position out of order or range"))?;
        let bits = r.u64_le().ok_or_else(|| err("exception truncated"))?;
        exceptions.push((pos, bits));
    }
    if n == 0 {
        return if r.is_empty() {
            Ok(())
        } else {
            Err(err("bytes after an empty column"))
        };
    }
    if take == 0 {
        return Ok(());
    }
    // Every group takes at least two bytes: bounds what is allocated below by the input.
    if (take - 1).div_ceil(GROUP) > r.remaining() / 2 {
        return Err(err(format!(
            "{} bytes cannot hold {take} values",
            buf.len()
        )));
    }
    let mut acc = r.varint().ok_or_else(|| err("first value missing"))?;
    let base_len = out.len();
    out.resize(base_len + take, 0.0);
    let dst = &mut out[base_len..];
    dst[0] = acc as f64 / p;
    let mut done = 1;
    let mut remaining_deltas = n - 1;
    let mut pad = [0u8; GROUP * 8 + 16];
    while done < take {
        let len = remaining_deltas.min(GROUP);
        let base = r.varint().ok_or_else(|| err("group header truncated"))?;
        let w = r.u8().ok_or_else(|| err("group header truncated"))?;
        if w > 64 {
            return Err(err(format!("bit width {w} is above 64")));
        }
        let bytes = (len * w as usize).div_ceil(8);
        let packed = r
            .take(bytes)
            .ok_or_else(|| err(format!("group of {len} values truncated")))?;
        let use_len = len.min(take - done);
        // A zero-padded copy, so every field loads as one unaligned u64 (or two).
        pad[..bytes].copy_from_slice(packed);
        pad[bytes..bytes + 16].fill(0);
        let group = &mut dst[done..done + use_len];
        unpack_group(&pad, w, base, &mut acc, p, group);
        done += use_len;
        remaining_deltas -= len;
    }
    if take == n && !r.is_empty() {
        return Err(err(format!("{} bytes after the last value", r.remaining())));
    }
    for (i, bits) in exceptions {
        if let Some(slot) = dst.get_mut(i) {
            *slot = f64::from_bits(bits);
        }
    }
    Ok(())
}

/// The little-endian u64 at byte `i` of `pad` (which has 16 bytes of slack past any field).
#[inline(always)]
fn word(pad: &[u8; GROUP * 8 + 16], i: usize) -> u64 {
    let i = i.min(GROUP * 8 + 8);
    u64::from_le_bytes(pad[i..i + 8].try_into().unwrap_or_default())
}

/// Unpacks `dst.len()` fields of `w` bits from `pad`, adding each (plus `base`) to the running
/// integer `acc` and storing `acc / p`.
#[inline]
fn unpack_group(
    pad: &[u8; GROUP * 8 + 16],
    w: u8,
    base: i64,
    acc: &mut i64,
    p: f64,
    dst: &mut [f64],
) {
    let mut a = *acc;
    if w == 0 {
        for d in dst.iter_mut() {
            a = a.wrapping_add(base);
            *d = a as f64 / p;
        }
    } else if w <= 56 {
        let mask = (1u64 << w) - 1;
        let mut bit = 0usize;
        for d in dst.iter_mut() {
            let x = (word(pad, bit >> 3) >> (bit & 7)) & mask;
            a = a.wrapping_add(base).wrapping_add(x as i64);
            *d = a as f64 / p;
            bit += w as usize;
        }
    } else {
        let mask = if w == 64 { u64::MAX } else { (1u64 << w) - 1 };
        let mut bit = 0usize;
        for d in dst.iter_mut() {
            let i = bit >> 3;
            let lo = word(pad, i) as u128 | ((word(pad, i + 8) as u128) << 64);
            let x = ((lo >> (bit & 7)) as u64) & mask;
            a = a.wrapping_add(base).wrapping_add(x as i64);
            *d = a as f64 / p;
            bit += w as usize;
        }
    }
    *acc = a;
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roundtrip(vals: &[f64]) -> Option<Vec<u8>> {
        let mut b = Vec::new();
        if !encode(vals, 8, &mut b) {
            assert!(b.is_empty(), "a refused column leaves the output alone");
            return None;
        }
        let mut out = Vec::new();
        decode(&b, vals.len(), &mut out).unwrap();
        let got: Vec<u64> = out.iter().map(|v| v.to_bits()).collect();
        let want: Vec<u64> = vals.iter().map(|v| v.to_bits()).collect();
        assert_eq!(got, want);
        for take in [0, 1, vals.len() / 2, vals.len()] {
            let mut part = vec![7.0];
            decode_prefix(&b, vals.len(), take, &mut part).unwrap();
            assert_eq!(part.len(), 1 + take);
            assert!(
                part[1..]
                    .iter()
                    .zip(vals)
                    .all(|(a, b)| a.to_bits() == b.to_bits())
            );
        }
        Some(b)
    }

    #[test]
    fn two_decimal_gauges_pack_into_a_few_bits_each() {
        let vals: Vec<f64> = (0..2160)
            .map(|i| {
                format!("{:.2}", 1.5 + ((i % 37) as f64) * 0.01)
                    .parse()
                    .unwrap()
            })
            .collect();
        let b = roundtrip(&vals).unwrap();
        assert_eq!(b[0], 2, "scale");
        assert!(b.len() < 2160, "{} bytes", b.len());
    }

    #[test]
    fn integer_counters_use_scale_zero_and_constant_columns_cost_headers_only() {
        let c: Vec<f64> = (0..1000)
            .map(|i| (1u64 << 40) as f64 + (i * 1500) as f64)
            .collect();
        let b = roundtrip(&c).unwrap();
        assert_eq!(b[0], 0);
        let flat = vec![42.0; 2000];
        let b = roundtrip(&flat).unwrap();
        assert!(b.len() < 2 * 2000 / GROUP + 8, "{} bytes", b.len());
    }

    #[test]
    fn stale_markers_nan_and_negative_zero_are_kept_verbatim() {
        let stale = f64::from_bits(0x7ff0_0000_0000_0002);
        let mut v: Vec<f64> = (0..100).map(|i| i as f64 * 0.5).collect();
        v[3] = stale;
        v[50] = -0.0;
        v[99] = f64::NAN;
        roundtrip(&v).unwrap();
        let mut inf = vec![1.0; 100];
        inf[0] = f64::INFINITY;
        roundtrip(&inf).unwrap();
    }

    #[test]
    fn columns_that_are_not_decimal_are_refused() {
        let thirds: Vec<f64> = (0..100).map(|i| i as f64 / 3.0).collect();
        assert_eq!(roundtrip(&thirds), None);
        assert_eq!(roundtrip(&[1e300, 2e300, 3e300]), None);
        assert_eq!(roundtrip(&[]), None);
        let mut b = Vec::new();
        assert!(!encode(&[f64::NAN; 10], 8, &mut b));
    }

    #[test]
    fn extreme_deltas_use_the_wide_path() {
        let v = [-MAX_INT, MAX_INT, -MAX_INT, 0.0, MAX_INT, 1.0];
        let b = roundtrip(&v).unwrap();
        assert_eq!(b[0], 0);
    }

    #[test]
    fn damaged_columns_are_errors() {
        let vals: Vec<f64> = (0..300).map(|i| i as f64 * 0.25).collect();
        let mut b = Vec::new();
        assert!(encode(&vals, 8, &mut b));
        let mut out = Vec::new();
        for cut in [0, 1, 2, 3, b.len() / 2, b.len() - 1] {
            assert!(decode(&b[..cut], 300, &mut out).is_err(), "cut at {cut}");
        }
        let mut bad = b.clone();
        bad[0] = 16;
        assert!(
            decode(&bad, 300, &mut out)
                .unwrap_err()
                .0
                .contains("scale 16")
        );
        assert!(decode(&b, 301, &mut out).is_err());
        // A header claiming a huge count is refused before anything is allocated for it.
        let mut huge = vec![2u8];
        put_uvarint(&mut huge, 1 << 40);
        huge.extend_from_slice(&[0, 0]);
        let e = decode(&huge, 1 << 40, &mut out).unwrap_err();
        assert!(e.0.contains("cannot hold"), "{e}");
        assert!(out.is_empty());
    }

    proptest! {
        #[test]
        fn decimals_roundtrip(
            digits in 0u8..6,
            ints in proptest::collection::vec(-1_000_000_000i64..1_000_000_000, 1..400),
        ) {
            let vals: Vec<f64> = ints
                .iter()
                .map(|&n| format!("{}e-{digits}", n).parse().unwrap())
                .collect();
            prop_assert!(roundtrip(&vals).is_some());
        }

        #[test]
        fn any_floats_roundtrip_or_are_refused(
            bits in proptest::collection::vec(any::<u64>(), 0..200),
        ) {
            let vals: Vec<f64> = bits.into_iter().map(f64::from_bits).collect();
            roundtrip(&vals);
        }

        #[test]
        fn decoding_junk_never_panics(
            b in proptest::collection::vec(any::<u8>(), 0..300),
            n in 0usize..2000,
            take in 0usize..2000,
        ) {
            let mut out = Vec::new();
            let _ = decode_prefix(&b, n, take, &mut out);
            prop_assert!(out.len() <= take.min(n));
        }
    }
}

//! The head's append-optimised chunk: delta-of-delta timestamps and XOR'd floats (after
//! Gorilla), with a narrower first timestamp bucket tuned for millisecond jitter.
//!
//! Layout (byte-exact description in `docs/format/chunk.md`): a 2-byte big-endian sample count,
//! then a bit stream. The first sample stores its timestamp as 64 bits and its value as 64 bits;
//! the second stores the timestamp delta through the same delta-of-delta buckets (with the
//! previous delta taken as 0); every value after the first is XOR'd against the previous one.
//!
//! [`XorAppender`] owns a growing buffer and appends in O(1); [`XorIter`] decodes from any byte
//! slice and never panics: a truncated or corrupt stream ends the iteration with an error.

/// Maximum samples in one chunk (the count is a u16).
pub const MAX_SAMPLES: usize = u16::MAX as usize;

/// A bit writer over a byte vector.
#[derive(Debug, Clone, Default)]
struct BitWriter {
    buf: Vec<u8>,
    /// Number of valid bits in the last byte (0 means the last byte is full or there is none).
    used: u8,
}

impl BitWriter {
    #[inline]
    fn write_bit(&mut self, bit: bool) {
        if self.used == 0 {
            self.buf.push(0);
        }
        if bit {
            let last = self.buf.len() - 1;
            self.buf[last] |= 0x80 >> self.used;
        }
        self.used = (self.used + 1) & 7;
    }

    /// Writes the low `n` bits of `v`, most significant first.
    #[inline]
    fn write_bits(&mut self, v: u64, mut n: u32) {
        while n > 0 {
            if self.used == 0 {
                self.buf.push(0);
            }
            let free = 8 - self.used as u32;
            let take = free.min(n);
            let shift = n - take;
            let bits = ((v >> shift) & ((1u64 << take) - 1)) as u8;
            let last = self.buf.len() - 1;
            self.buf[last] |= bits << (free - take);
            self.used = ((self.used as u32 + take) & 7) as u8;
            n -= take;
        }
    }
}

/// A bit reader over a byte slice; reading past the end returns `None`.
#[derive(Debug, Clone)]
struct BitReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> BitReader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bits left to read.
    #[inline]
    fn remaining(&self) -> usize {
        (self.buf.len() * 8).saturating_sub(self.pos)
    }

    /// The next 64 bits from the current position, MSB first, zero-padded past the end.
    #[inline]
    fn peek64(&self) -> u64 {
        let byte = self.pos >> 3;
        let mut w = [0u8; 8];
        if let Some(src) = self.buf.get(byte..byte + 8) {
            w.copy_from_slice(src);
        } else if byte < self.buf.len() {
            let rest = &self.buf[byte..];
            w[..rest.len()].copy_from_slice(rest);
        }
        u64::from_be_bytes(w) << (self.pos & 7)
    }

    #[inline]
    fn read_bits(&mut self, n: u32) -> Option<u64> {
        if n == 0 {
            return Some(0);
        }
        if self.pos + n as usize > self.buf.len() * 8 {
            return None;
        }
        if n <= 56 {
            let v = self.peek64() >> (64 - n);
            self.pos += n as usize;
            Some(v)
        } else {
            let hi = self.read_bits(n - 32)?;
            let lo = self.read_bits(32)?;
            Some((hi << 32) | lo)
        }
    }
}

/// Delta-of-delta buckets: (prefix bits, prefix length, payload bits).
const DOD_BUCKETS: [(u64, u32, u32); 4] = [
    (0b10, 2, 7),
    (0b110, 3, 14),
    (0b1110, 4, 20),
    (0b1111, 4, 64),
];

fn write_dod(w: &mut BitWriter, dod: i64) {
    if dod == 0 {
        w.write_bit(false);
        return;
    }
    for &(prefix, plen, bits) in &DOD_BUCKETS {
        let fits = bits == 64 || (-(1i64 << (bits - 1)) < dod && dod <= (1i64 << (bits - 1)));
        if fits {
            w.write_bits(prefix, plen);
            let mask = if bits == 64 {
                u64::MAX
            } else {
                (1u64 << bits) - 1
            };
            w.write_bits(dod as u64 & mask, bits);
            return;
        }
    }
}

fn read_dod(r: &mut BitReader<'_>) -> Option<i64> {
    // One 64-bit window holds the prefix (≤ 4 bits) and, except for the 64-bit bucket, the
    // payload (≤ 20 bits).
    if r.remaining() == 0 {
        return None;
    }
    let w = r.peek64();
    let ones = w.leading_ones().min(4);
    let bits = match ones {
        0 => {
            r.pos += 1;
            return Some(0);
        }
        1 => 7,
        2 => 14,
        3 => 20,
        _ => 64,
    };
    let prefix = if ones < 4 { ones + 1 } else { 4 };
    if bits == 64 {
        if r.remaining() < 4 {
            return None;
        }
        r.pos += 4;
        return Some(r.read_bits(64)? as i64);
    }
    if r.remaining() < (prefix + bits) as usize {
        return None;
    }
    let raw = (w << prefix) >> (64 - bits);
    r.pos += (prefix + bits) as usize;
    // Sign-extend; the encoder maps (-2^(b-1), 2^(b-1)] so 2^(b-1) itself appears as the
    // minimum negative pattern and must read back positive.
    let half = 1u64 << (bits - 1);
    let v = if raw > half {
        raw as i64 - (1i64 << bits)
    } else {
        raw as i64
    };
    Some(v)
}

/// An appendable XOR chunk. Samples must be appended in strictly increasing time order.
#[derive(Debug, Clone, Default)]
pub struct XorAppender {
    w: BitWriter,
    n: u16,
    t: i64,
    delta: i64,
    v: u64,
    leading: u8,
    trailing: u8,
    mint: i64,
}

impl XorAppender {
    /// An empty chunk.
    pub fn new() -> Self {
        let mut w = BitWriter::default();
        w.buf.reserve_exact(24);
        w.buf.extend_from_slice(&[0, 0]);
        Self {
            w,
            leading: 0xff,
            ..Default::default()
        }
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.n as usize
    }

    /// Whether the chunk has no samples.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Whether the chunk can take another sample.
    pub fn is_full(&self) -> bool {
        self.n as usize >= MAX_SAMPLES
    }

    /// Time of the first sample (meaningless when empty).
    pub fn min_time(&self) -> i64 {
        self.mint
    }

    /// Time of the last sample (meaningless when empty).
    pub fn max_time(&self) -> i64 {
        self.t
    }

    /// Value of the last sample (meaningless when empty).
    pub fn last_value(&self) -> f64 {
        f64::from_bits(self.v)
    }

    /// The encoded bytes so far (a valid chunk).
    pub fn bytes(&self) -> &[u8] {
        &self.w.buf
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.w.buf.capacity()
    }

    /// Consumes the appender, returning the encoded chunk trimmed to size.
    pub fn into_bytes(self) -> Box<[u8]> {
        self.w.buf.into_boxed_slice()
    }

    /// Appends a sample; the caller guarantees `t` is greater than the last timestamp and the
    /// chunk is not full.
    pub fn append(&mut self, t: i64, v: f64) {
        let bits = v.to_bits();
        match self.n {
            0 => {
                self.w.write_bits(t as u64, 64);
                self.w.write_bits(bits, 64);
                self.mint = t;
            }
            _ => {
                let delta = t.wrapping_sub(self.t);
                let dod = if self.n == 1 {
                    delta
                } else {
                    delta.wrapping_sub(self.delta)
                };
                write_dod(&mut self.w, dod);
                self.delta = delta;
                self.write_value(bits);
            }
        }
        self.t = t;
        self.v = bits;
        self.n += 1;
        let n = self.n.to_be_bytes();
        self.w.buf[0] = n[0];
        self.w.buf[1] = n[1];
    }

    fn write_value(&mut self, bits: u64) {
        let x = bits ^ self.v;
        if x == 0 {
            self.w.write_bit(false);
            return;
        }
        self.w.write_bit(true);
        let lead = (x.leading_zeros() as u8).min(31);
        let trail = x.trailing_zeros() as u8;
        if self.leading != 0xff && lead >= self.leading && trail >= self.trailing {
            self.w.write_bit(false);
            let sig = 64 - self.leading as u32 - self.trailing as u32;
            self.w.write_bits(x >> self.trailing, sig);
        } else {
            self.leading = lead;
            self.trailing = trail;
            self.w.write_bit(true);
            self.w.write_bits(lead as u64, 5);
            let sig = 64 - lead as u32 - trail as u32;
            // sig is 1..=64; 64 is stored as 0 in six bits.
            self.w.write_bits((sig & 63) as u64, 6);
            self.w.write_bits(x >> trail, sig);
        }
    }
}

/// A chunk stream that does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("XOR chunk is corrupt or truncated after {decoded} of {declared} samples")]
pub struct ChunkCorrupt {
    /// Samples decoded before the problem.
    pub decoded: usize,
    /// Samples the header declared.
    pub declared: usize,
}

/// The number of samples an XOR chunk declares (its header), without decoding it.
pub fn sample_count(buf: &[u8]) -> usize {
    match buf {
        [a, b, ..] => u16::from_be_bytes([*a, *b]) as usize,
        [] => 0,
        [_] => 1,
    }
}

/// Decodes an XOR chunk. Yields `Ok((t, v))`, then at most one `Err` if the stream is bad.
#[derive(Debug, Clone)]
pub struct XorIter<'a> {
    r: BitReader<'a>,
    total: usize,
    i: usize,
    t: i64,
    delta: i64,
    v: u64,
    leading: u32,
    trailing: u32,
    failed: bool,
}

impl<'a> XorIter<'a> {
    /// Starts decoding `buf` (as produced by [`XorAppender::bytes`]).
    pub fn new(buf: &'a [u8]) -> Self {
        let (total, body) = if buf.len() >= 2 {
            (u16::from_be_bytes([buf[0], buf[1]]) as usize, &buf[2..])
        } else {
            (usize::from(!buf.is_empty()), &buf[..0])
        };
        Self {
            r: BitReader::new(body),
            total,
            i: 0,
            t: 0,
            delta: 0,
            v: 0,
            leading: 0,
            trailing: 0,
            failed: false,
        }
    }

    /// Number of samples the chunk declares.
    pub fn declared_len(&self) -> usize {
        self.total
    }

    fn step(&mut self) -> Option<(i64, f64)> {
        if self.i == 0 {
            self.t = self.r.read_bits(64)? as i64;
            self.v = self.r.read_bits(64)?;
        } else {
            let dod = read_dod(&mut self.r)?;
            self.delta = if self.i == 1 {
                dod
            } else {
                self.delta.wrapping_add(dod)
            };
            self.t = self.t.wrapping_add(self.delta);
            if self.r.remaining() == 0 {
                return None;
            }
            let w = self.r.peek64();
            if w >> 63 == 1 {
                if (w >> 62) & 1 == 1 {
                    // '11', 5 bits of leading zeros, 6 bits of significant length.
                    if self.r.remaining() < 13 {
                        return None;
                    }
                    self.leading = ((w >> 57) & 0x1f) as u32;
                    let mut sig = ((w >> 51) & 0x3f) as u32;
                    self.r.pos += 13;
                    if sig == 0 {
                        sig = 64;
                    }
                    if self.leading + sig > 64 {
                        return None;
                    }
                    self.trailing = 64 - self.leading - sig;
                } else {
                    // '10': reuse the previous window.
                    if self.i == 1 && self.leading == 0 && self.trailing == 0 {
                        // A reuse of a window that was never set: only a corrupt stream does this.
                        return None;
                    }
                    if self.r.remaining() < 2 {
                        return None;
                    }
                    self.r.pos += 2;
                }
                let sig = 64 - self.leading - self.trailing;
                let x = self.r.read_bits(sig)?;
                self.v ^= if self.trailing >= 64 {
                    0
                } else {
                    x << self.trailing
                };
            } else {
                self.r.pos += 1;
            }
        }
        self.i += 1;
        Some((self.t, f64::from_bits(self.v)))
    }
}

impl Iterator for XorIter<'_> {
    type Item = Result<(i64, f64), ChunkCorrupt>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.i >= self.total {
            return None;
        }
        match self.step() {
            Some(s) => Some(Ok(s)),
            None => {
                self.failed = true;
                Some(Err(ChunkCorrupt {
                    decoded: self.i,
                    declared: self.total,
                }))
            }
        }
    }
}

/// The 128 bits from bit `pos` on, MSB first, zero-padded past the end. At least 121 of them
/// are real bits of `buf` (when `buf` is long enough): one window covers any field.
#[inline(always)]
fn peek128(buf: &[u8], pos: usize) -> u128 {
    let byte = pos >> 3;
    let mut w = [0u8; 16];
    if let Some(src) = buf.get(byte..byte + 16) {
        w.copy_from_slice(src);
    } else if let Some(rest) = buf.get(byte..) {
        w[..rest.len()].copy_from_slice(rest);
    }
    u128::from_be_bytes(w) << (pos & 7)
}

/// Decodes a whole XOR chunk into `out` (appending); on a corrupt or truncated stream the
/// samples before the damage are appended and the error says how far it got.
///
/// Yields exactly what [`XorIter`] yields, but reads each field from one 128-bit window and
/// checks bounds once per sample instead of once per field (about 3× faster).
pub fn decode_xor(buf: &[u8], out: &mut Vec<(i64, f64)>) -> Result<(), ChunkCorrupt> {
    out.reserve(sample_count(buf).min(buf.len() * 8));
    xor_each(buf, |_, t, v| {
        out.push((t, v));
        true
    })
}

/// A sample and its index in its chunk.
pub type IndexedSample = (usize, (i64, f64));

/// The first sample at or after `mint` in an XOR chunk and its index, decoding only up to
/// it (as fast as [`decode_xor`]); `None` when every sample is before `mint`.
pub fn seek_xor(buf: &[u8], mint: i64) -> Result<Option<IndexedSample>, ChunkCorrupt> {
    let mut found = None;
    xor_each(buf, |i, t, v| {
        if t >= mint {
            found = Some((i, (t, v)));
            return false;
        }
        true
    })?;
    Ok(found)
}

/// Calls `f(index, t, v)` for each sample of an XOR chunk in order until it returns false.
#[inline(always)]
fn xor_each(buf: &[u8], mut f: impl FnMut(usize, i64, f64) -> bool) -> Result<(), ChunkCorrupt> {
    let (total, body) = if buf.len() >= 2 {
        (u16::from_be_bytes([buf[0], buf[1]]) as usize, &buf[2..])
    } else {
        (usize::from(!buf.is_empty()), &buf[..0])
    };
    if total == 0 {
        return Ok(());
    }
    let corrupt = |decoded| ChunkCorrupt {
        decoded,
        declared: total,
    };
    let nbits = body.len() * 8;
    if nbits < 128 {
        return Err(corrupt(0));
    }
    let first = peek128(body, 0);
    let mut t = (first >> 64) as u64 as i64;
    let mut v = first as u64;
    if !f(0, t, f64::from_bits(v)) {
        return Ok(());
    }
    let mut pos = 128usize;
    let (mut delta, mut leading, mut trailing) = (0i64, 0u32, 0u32);
    for i in 1..total {
        // Timestamp: delta of delta, prefix '0' / '10' / '110' / '1110' / '1111'.
        let w = peek128(body, pos);
        let top = (w >> 64) as u64;
        let (dod, used) = match top.leading_ones() {
            0 => (0, 1),
            ones @ 1..=3 => {
                let (prefix, bits) = match ones {
                    1 => (2, 7),
                    2 => (3, 14),
                    _ => (4, 20),
                };
                let raw = (top << prefix) >> (64 - bits);
                // The encoder maps (-2^(b-1), 2^(b-1)], so 2^(b-1) reads back positive.
                let dod = if raw > 1u64 << (bits - 1) {
                    raw as i64 - (1i64 << bits)
                } else {
                    raw as i64
                };
                (dod, prefix + bits)
            }
            _ => (((w << 4) >> 64) as u64 as i64, 68),
        };
        delta = if i == 1 { dod } else { delta.wrapping_add(dod) };
        t = t.wrapping_add(delta);
        // Value: '0' same, '10' XOR in the previous window, '11' new window. At most 77 bits,
        // so after a timestamp of up to 51 bits the same window still holds all of it.
        let w = if used <= 51 {
            w << used
        } else {
            peek128(body, pos + used as usize)
        };
        pos += used as usize;
        let top = (w >> 64) as u64;
        if top >> 63 == 0 {
            pos += 1;
        } else {
            let skip = if top >> 62 == 0b11 {
                leading = ((top >> 57) & 0x1f) as u32;
                let mut sig = ((top >> 51) & 0x3f) as u32;
                if sig == 0 {
                    sig = 64;
                }
                if leading + sig > 64 {
                    return Err(corrupt(i));
                }
                trailing = 64 - leading - sig;
                13
            } else {
                if i == 1 && leading == 0 && trailing == 0 {
                    // A reuse of a window that was never set: only a corrupt stream does this.
                    return Err(corrupt(i));
                }
                2
            };
            let sig = 64 - leading - trailing;
            let x = ((w << skip) >> (128 - sig)) as u64;
            pos += (skip + sig) as usize;
            v ^= x << trailing;
        }
        if pos > nbits {
            return Err(corrupt(i));
        }
        if !f(i, t, f64::from_bits(v)) {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roundtrip(samples: &[(i64, f64)]) -> Vec<(i64, f64)> {
        let mut a = XorAppender::new();
        for &(t, v) in samples {
            a.append(t, v);
        }
        let mut out = Vec::new();
        decode_xor(a.bytes(), &mut out).unwrap();
        out
    }

    fn bits(v: &[(i64, f64)]) -> Vec<(i64, u64)> {
        v.iter().map(|&(t, v)| (t, v.to_bits())).collect()
    }

    #[test]
    fn special_values_roundtrip_bit_exact() {
        let s = vec![
            (1000, 1.0),
            (2000, f64::NAN),
            (3000, vigil_model::stale_marker()),
            (4000, f64::INFINITY),
            (5000, f64::NEG_INFINITY),
            (6000, -0.0),
            (7000, 0.0),
            (7001, f64::MIN_POSITIVE),
            (i64::MAX / 2, f64::MAX),
        ];
        assert_eq!(bits(&roundtrip(&s)), bits(&s));
    }

    #[test]
    fn regular_interval_and_constant_value_cost_two_bits_per_sample() {
        let mut a = XorAppender::new();
        for i in 0..120 {
            a.append(1_700_000_000_000 + i * 10_000, 5.0);
        }
        // 2 (count) + 16 (first sample) + ~2.3 (second delta) + 118 × 2 bits.
        assert!(a.bytes().len() <= 51, "{}", a.bytes().len());
    }

    #[test]
    fn truncated_chunk_is_an_error_not_a_panic() {
        let mut a = XorAppender::new();
        for i in 0..50 {
            a.append(i * 10_003, i as f64 * 1.37);
        }
        let b = a.bytes();
        for cut in 0..b.len() {
            let mut out = Vec::new();
            let r = decode_xor(&b[..cut], &mut out);
            assert!(r.is_err() || out.len() == 50 || cut < 2);
        }
    }

    proptest! {
        #[test]
        fn any_increasing_series_roundtrips(
            start in any::<i32>(),
            deltas in proptest::collection::vec(1i64..5_000_000_000, 0..300),
            vals in proptest::collection::vec(any::<u64>(), 300),
        ) {
            let mut t = start as i64;
            let mut s = Vec::new();
            for (i, d) in deltas.iter().enumerate() {
                s.push((t, f64::from_bits(vals[i])));
                t += d;
            }
            prop_assert_eq!(bits(&roundtrip(&s)), bits(&s));
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut out = Vec::new();
            let _ = decode_xor(&b, &mut out);
            let _ = seek_xor(&b, 0);
        }

        /// Seeking finds what a full decode finds: the first sample at or after `mint`, its
        /// index, or nothing.
        #[test]
        fn seek_xor_finds_the_first_sample_in_range(
            deltas in proptest::collection::vec(1i64..100_000, 1..200),
            vals in proptest::collection::vec(any::<u64>(), 200),
            at in 0usize..220,
            off in -1i64..=1,
        ) {
            let mut t = 1_700_000_000_000i64;
            let mut s = Vec::new();
            for (i, d) in deltas.iter().enumerate() {
                s.push((t, f64::from_bits(vals[i])));
                t += d;
            }
            let mut a = XorAppender::new();
            for &(t, v) in &s {
                a.append(t, v);
            }
            let buf = a.bytes().to_vec();
            // On, just before or after a sample's time, or past the end.
            let mint = s.get(at).map_or(t + 1, |p| p.0 + off);
            let want = s.iter().position(|p| p.0 >= mint).map(|i| (i, s[i].1.to_bits()));
            let got = seek_xor(&buf, mint).unwrap().map(|(i, p)| (i, p.1.to_bits()));
            prop_assert_eq!(got, want);
            if let Ok(Some((i, p))) = seek_xor(&buf, mint) {
                prop_assert_eq!(p.0, s[i].0);
            }
        }

        /// The fast whole-chunk decoder and the iterator agree on every input, good or bad:
        /// same samples, same error.
        #[test]
        fn decode_xor_agrees_with_the_iterator(
            b in proptest::collection::vec(any::<u8>(), 0..300),
            deltas in proptest::collection::vec(-3_000_000i64..3_000_000, 0..200),
            vals in proptest::collection::vec(any::<u64>(), 200),
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
        ) {
            let mut a = XorAppender::new();
            let mut t = 1_700_000_000_000i64;
            for (i, d) in deltas.iter().enumerate() {
                t += 10_000 + d;
                // Mostly few distinct values, so every value encoding appears.
                let v = if i % 3 == 0 { vals[i] } else { vals[i % 7] };
                a.append(t, f64::from_bits(v));
            }
            let good = a.bytes().to_vec();
            let mut bad = good.clone();
            if !bad.is_empty() {
                let i = flip.index(bad.len());
                bad[i] ^= 1 << (i % 8);
                bad.truncate(cut.index(bad.len() + 1).max(i.min(2)));
            }
            for input in [&b, &good, &bad] {
                let mut fast = Vec::new();
                let r = decode_xor(input, &mut fast);
                let mut slow = Vec::new();
                let mut err = None;
                for s in XorIter::new(input) {
                    match s {
                        Ok(s) => slow.push(s),
                        Err(e) => err = Some(e),
                    }
                }
                prop_assert_eq!(bits(&fast), bits(&slow));
                prop_assert_eq!(r.err(), err);
            }
        }
    }
}

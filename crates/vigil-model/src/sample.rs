//! Samples and Prometheus staleness markers.

/// The bit pattern of Prometheus' staleness marker, a NaN that means "this series ended here".
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// The staleness marker as an `f64`.
pub fn stale_marker() -> f64 {
    f64::from_bits(STALE_NAN_BITS)
}

/// Whether `v` is the staleness marker (compared bit for bit: other NaNs are ordinary values).
pub fn is_stale_marker(v: f64) -> bool {
    v.to_bits() == STALE_NAN_BITS
}

/// One sample: a timestamp in milliseconds since the Unix epoch and a float value.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// The value; NaN payloads (the staleness marker) are preserved bit for bit.
    pub value: f64,
}

impl Sample {
    /// A sample at `ts_ms` with `value`.
    pub fn new(ts_ms: i64, value: f64) -> Self {
        Self { ts_ms, value }
    }
}

impl PartialEq for Sample {
    /// Bit-exact equality: NaN equals the same NaN, `-0.0` differs from `0.0`.
    fn eq(&self, other: &Self) -> bool {
        self.ts_ms == other.ts_ms && self.value.to_bits() == other.value.to_bits()
    }
}

impl Eq for Sample {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_marker_is_a_specific_nan() {
        assert!(stale_marker().is_nan());
        assert!(is_stale_marker(stale_marker()));
        assert!(!is_stale_marker(f64::NAN));
        assert_eq!(Sample::new(1, f64::NAN), Sample::new(1, f64::NAN));
        assert_ne!(Sample::new(1, 0.0), Sample::new(1, -0.0));
    }
}

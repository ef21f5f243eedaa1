//! Phi accrual (Hayashibara et al.), with the logistic approximation of the normal CDF that
//! Akka and Cassandra use. Phi is monotonic in the silence, so a threshold can be inverted once
//! into "how many standard deviations past the mean", and each heartbeat turns that into a
//! deadline: no periodic recomputation.

/// Phi after `y` standard deviations past the expected arrival.
pub fn phi_of(y: f64) -> f64 {
    let e = (-y * (1.5976 + 0.070566 * y * y)).exp();
    if y > 0.0 {
        -(e / (1.0 + e)).log10()
    } else {
        -(1.0 - 1.0 / (1.0 + e)).log10()
    }
}

/// The `y` at which phi reaches `threshold` (bisection; phi is increasing in `y`).
pub fn y_for(threshold: f64) -> f64 {
    let (mut lo, mut hi) = (-10.0f64, 60.0f64);
    for _ in 0..200 {
        let mid = (lo + hi) / 2.0;
        if phi_of(mid) < threshold {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    hi
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phi_is_increasing_and_inverts() {
        let mut prev = phi_of(-5.0);
        for i in -49..400 {
            let p = phi_of(i as f64 / 10.0);
            assert!(p >= prev, "{i}");
            prev = p;
        }
        for t in [1.0, 3.0, 8.0, 12.0, 16.0] {
            let y = y_for(t);
            assert!((phi_of(y) - t).abs() < 1e-6, "{t}: {}", phi_of(y));
        }
        // Akka's threshold 8 is a little over 5 standard deviations.
        assert!((5.0..5.6).contains(&y_for(8.0)), "{}", y_for(8.0));
    }
}

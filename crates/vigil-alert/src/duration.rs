//! Durations as Prometheus and Alertmanager configuration files write them: `30s`, `1h30m`,
//! `2d`, `0`. Strict: units in decreasing order, each at most once, no fractions.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A non-negative duration in milliseconds, parsed from and printed as Prometheus writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PromDuration(pub i64);

const UNITS: [(&str, i64); 8] = [
    ("y", 365 * 24 * 3_600_000),
    ("w", 7 * 24 * 3_600_000),
    ("d", 24 * 3_600_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
    ("", 0),
];

impl PromDuration {
    /// Parses `1h30m`-style text; `None` names no reason, see [`parse_duration`].
    pub fn parse(s: &str) -> Result<Self, String> {
        parse_duration(s).map(PromDuration)
    }

    /// Milliseconds.
    pub fn ms(self) -> i64 {
        self.0
    }
}

/// Parses a Prometheus duration into milliseconds, with a reason when it is not one.
pub fn parse_duration(s: &str) -> Result<i64, String> {
    let bad = || format!("not a valid duration string: {s:?}");
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err("empty duration string".into());
    }
    let b = s.as_bytes();
    let mut i = 0;
    let mut total: i64 = 0;
    let mut last_unit = usize::MAX; // index into UNITS of the previous unit; must increase
    while i < b.len() {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return Err(bad());
        }
        let n: i64 = s[start..i].parse().map_err(|_| bad())?;
        let ustart = i;
        while i < b.len() && b[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit = &s[ustart..i];
        let Some(idx) = UNITS[..7].iter().position(|(u, _)| *u == unit) else {
            return Err(bad());
        };
        if last_unit != usize::MAX && idx <= last_unit {
            return Err(bad());
        }
        last_unit = idx;
        total = n
            .checked_mul(UNITS[idx].1)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("duration out of range: {s:?}"))?;
    }
    Ok(total)
}

impl fmt::Display for PromDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = self.0;
        if ms == 0 {
            return f.write_str("0s");
        }
        for (u, size) in &UNITS[..7] {
            if ms >= *size {
                write!(f, "{}{}", ms / size, u)?;
                ms %= size;
            }
        }
        Ok(())
    }
}

impl Serialize for PromDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PromDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        PromDuration::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        for (s, ms, back) in [
            ("0", 0, "0s"),
            ("30s", 30_000, "30s"),
            ("1h30m", 5_400_000, "1h30m"),
            ("1d", 86_400_000, "1d"),
            ("90s", 90_000, "1m30s"),
            ("1s500ms", 1_500, "1s500ms"),
        ] {
            assert_eq!(parse_duration(s), Ok(ms), "{s}");
            assert_eq!(PromDuration(ms).to_string(), back);
        }
    }

    #[test]
    fn rejects_malformed() {
        for s in [
            "",
            "5",
            "1.5m",
            "m",
            "5x",
            "1m1h",
            "1s1s",
            "-5m",
            "5m ",
            "99999999999999y",
        ] {
            assert!(parse_duration(s).is_err(), "{s:?} accepted");
        }
    }
}

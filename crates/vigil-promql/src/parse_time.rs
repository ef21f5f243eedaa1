//! Times and durations as Prometheus' API and test scripts write them.

/// Parses a duration: Prometheus units (`1h30m`, `10s53ms`, `2d`, `1y`) or a plain number of
/// seconds (`15`, `1.5`). Returns milliseconds.
pub fn parse_duration(s: &str) -> Option<i64> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(f) = s.parse::<f64>() {
        if !f.is_finite() {
            return None;
        }
        let ms = (f * 1000.0).round();
        if ms.abs() > 9.0e15 {
            return None;
        }
        return Some(ms as i64);
    }
    let b = s.as_bytes();
    let mut i = 0;
    let mut total: i64 = 0;
    let mut last_rank = usize::MAX;
    while i < b.len() {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return None;
        }
        let n: i64 = s[start..i].parse().ok()?;
        let ustart = i;
        while i < b.len() && b[i].is_ascii_alphabetic() {
            i += 1;
        }
        let (mult, rank) = match &s[ustart..i] {
            "y" => (365 * 24 * 3_600_000, 0),
            "w" => (7 * 24 * 3_600_000, 1),
            "d" => (24 * 3_600_000, 2),
            "h" => (3_600_000, 3),
            "m" => (60_000, 4),
            "s" => (1_000, 5),
            "ms" => (1, 6),
            _ => return None,
        };
        // Units must appear in decreasing order, each at most once.
        if last_rank != usize::MAX && rank <= last_rank {
            return None;
        }
        last_rank = rank;
        total = total.checked_add(n.checked_mul(mult)?)?;
    }
    Some(total)
}

/// Parses a time: Unix seconds (`1700000000`, `1700000000.123`) or RFC 3339
/// (`2026-11-28T12:00:00Z`, `…+01:00`, fractional seconds allowed). Returns milliseconds.
pub fn parse_time(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(f) = s.parse::<f64>() {
        if !f.is_finite() {
            return None;
        }
        let ms = (f * 1000.0).round();
        if ms.abs() > 9.2e18 {
            return None;
        }
        return Some(ms as i64);
    }
    parse_rfc3339(s)
}

fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !(b[10] == b'T' || b[10] == b't') {
        return None;
    }
    let num = |a: usize, e: usize| -> Option<i64> {
        let t = s.get(a..e)?;
        if !t.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        t.parse().ok()
    };
    let (y, mo, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (h, mi, sec) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut frac_ms = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let st = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if st == i {
            return None;
        }
        let digits = &s[st..i.min(st + 3)];
        frac_ms = digits.parse::<i64>().ok()? * 10i64.pow(3 - digits.len() as u32);
    }
    let offset_min = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        c @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let oh = num(i + 1, i + 3)?;
            let om = num(i + 4, i + 6)?;
            let m = oh * 60 + om;
            if *c == b'-' { -m } else { m }
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo, d);
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset_min * 60;
    Some(secs * 1000 + frac_ms)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5m"), Some(300_000));
        assert_eq!(parse_duration("1h30m"), Some(5_400_000));
        assert_eq!(parse_duration("10s53ms"), Some(10_053));
        assert_eq!(parse_duration("1.5"), Some(1500));
        assert_eq!(parse_duration("0"), Some(0));
        assert_eq!(parse_duration("5x"), None);
        assert_eq!(parse_duration("m"), None);
        assert_eq!(parse_duration("30s1m"), None);
        assert_eq!(parse_duration(""), None);
    }

    #[test]
    fn times() {
        assert_eq!(parse_time("1700000000"), Some(1_700_000_000_000));
        assert_eq!(parse_time("1700000000.123"), Some(1_700_000_000_123));
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_time("2026-11-28T12:00:00.5Z"),
            Some(1_795_867_200_500)
        );
        assert_eq!(
            parse_time("2026-11-28T13:00:00+01:00"),
            Some(1_795_867_200_000)
        );
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(parse_time("NaN"), None);
    }
}

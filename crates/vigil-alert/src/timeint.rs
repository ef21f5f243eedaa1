//! Alertmanager time intervals (UTC): times of day, weekdays, days of month, months, years.

use crate::config::TimeInterval;
use crate::template::civil_from_days;

const WEEKDAYS: [&str; 7] = [
    "sunday",
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
];
const MONTHS: [&str; 12] = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
];

fn hhmm(s: &str) -> Result<u32, String> {
    let (h, m) = s
        .split_once(':')
        .ok_or_else(|| format!("bad time {s:?}, want HH:MM"))?;
    let (h, m): (u32, u32) = (
        h.parse().map_err(|_| format!("bad time {s:?}"))?,
        m.parse().map_err(|_| format!("bad time {s:?}"))?,
    );
    if h > 24 || m > 59 || (h == 24 && m != 0) {
        return Err(format!("bad time {s:?}"));
    }
    Ok(h * 60 + m)
}

fn range(s: &str, parse: &dyn Fn(&str) -> Result<i64, String>) -> Result<(i64, i64), String> {
    match s.split_once(':') {
        Some((a, b)) => Ok((parse(a.trim())?, parse(b.trim())?)),
        None => {
            let v = parse(s.trim())?;
            Ok((v, v))
        }
    }
}

fn named<'a>(names: &'a [&'a str], base: i64) -> impl Fn(&str) -> Result<i64, String> + 'a {
    move |s: &str| {
        let l = s.to_ascii_lowercase();
        if let Some(i) = names.iter().position(|n| *n == l) {
            return Ok(i as i64 + base);
        }
        l.parse::<i64>().map_err(|_| format!("unknown value {s:?}"))
    }
}

/// Validates an interval.
pub fn check(t: &TimeInterval) -> Result<(), String> {
    if let Some(loc) = &t.location
        && !loc.eq_ignore_ascii_case("utc")
    {
        return Err(format!("location {loc:?} is not supported (only UTC)"));
    }
    for r in &t.times {
        let (a, b) = (hhmm(&r.start_time)?, hhmm(&r.end_time)?);
        if a >= b {
            return Err("start_time must be before end_time".into());
        }
    }
    for w in &t.weekdays {
        range(w, &named(&WEEKDAYS, 0))?;
    }
    for m in &t.months {
        range(m, &named(&MONTHS, 1))?;
    }
    for d in &t.days_of_month {
        range(d, &|s: &str| {
            s.parse::<i64>().map_err(|_| format!("bad day {s:?}"))
        })?;
    }
    for y in &t.years {
        range(y, &|s: &str| {
            s.parse::<i64>().map_err(|_| format!("bad year {s:?}"))
        })?;
    }
    Ok(())
}

/// Whether `now_ms` (UTC) is inside the interval.
pub fn contains(t: &TimeInterval, now_ms: i64) -> bool {
    let days = now_ms.div_euclid(86_400_000);
    let minute = (now_ms.rem_euclid(86_400_000) / 60_000) as u32;
    let (y, mo, d) = civil_from_days(days);
    let wd = (days + 4).rem_euclid(7); // 1970-01-01 was a Thursday
    let ok_times = t.times.is_empty()
        || t.times.iter().any(|r| {
            matches!((hhmm(&r.start_time), hhmm(&r.end_time)), (Ok(a), Ok(b)) if minute >= a && minute < b)
        });
    let within = |specs: &[String], v: i64, p: &dyn Fn(&str) -> Result<i64, String>| {
        specs.is_empty()
            || specs
                .iter()
                .any(|s| matches!(range(s, p), Ok((a, b)) if v >= a && v <= b))
    };
    let month_len = {
        let next = if mo == 12 { (y + 1, 1) } else { (y, mo + 1) };
        let first_next = days_from_civil(next.0, next.1, 1);
        first_next - days_from_civil(y, mo, 1)
    };
    let ok_days = t.days_of_month.is_empty()
        || t.days_of_month.iter().any(|s| {
            let p = |x: &str| x.parse::<i64>().map_err(|_| String::new());
            match range(s, &p) {
                Ok((a, b)) => {
                    let fix = |v: i64| if v < 0 { month_len + v + 1 } else { v };
                    let (a, b) = (fix(a), fix(b));
                    i64::from(d) >= a && i64::from(d) <= b
                }
                Err(_) => false,
            }
        });
    ok_times
        && within(&t.weekdays, wd, &named(&WEEKDAYS, 0))
        && ok_days
        && within(&t.months, i64::from(mo), &named(&MONTHS, 1))
        && within(&t.years, y, &|s: &str| {
            s.parse::<i64>().map_err(|_| String::new())
        })
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TimeRange;

    #[test]
    fn business_hours() {
        let t = TimeInterval {
            times: vec![TimeRange {
                start_time: "09:00".into(),
                end_time: "17:00".into(),
            }],
            weekdays: vec!["monday:friday".into()],
            ..Default::default()
        };
        check(&t).unwrap();
        // 2026-11-27 was a Friday; 2026-11-28 a Saturday.
        let fri = days_from_civil(2026, 11, 27) * 86_400_000;
        assert!(contains(&t, fri + 10 * 3_600_000));
        assert!(!contains(&t, fri + 18 * 3_600_000));
        assert!(!contains(&t, fri + 86_400_000 + 10 * 3_600_000));
        let last = TimeInterval {
            days_of_month: vec!["-1".into()],
            ..Default::default()
        };
        assert!(contains(&last, days_from_civil(2026, 2, 28) * 86_400_000));
        assert!(!contains(&last, days_from_civil(2026, 2, 27) * 86_400_000));
        assert!(
            check(&TimeInterval {
                location: Some("Europe/Berlin".into()),
                ..Default::default()
            })
            .is_err()
        );
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
    }
}

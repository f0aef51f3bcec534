//! Wall-clock helpers shared by the fleet and the watch: RFC 3339 (UTC) and calendar months, without a
//! date crate (jiff is used only where time zones matter).

use std::time::{SystemTime, UNIX_EPOCH};

pub fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Howard Hinnant's inverse of days-from-civil.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// (year, month) of a time, UTC.
pub fn month_of(t: SystemTime) -> (i64, u32) {
    let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (y, m, _) = civil_from_days((secs / 86_400) as i64);
    (y, m)
}

/// Seconds since the start of the UTC month of `t`.
pub fn secs_into_month(t: SystemTime) -> f64 {
    let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    let (_, _, d) = civil_from_days((secs / 86_400.0) as i64);
    (d as f64 - 1.0) * 86_400.0 + secs % 86_400.0
}

pub fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(1_404_174_600)), "2014-07-01T00:30:00Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400 + 3600);
        assert_eq!(month_of(t), (2000, 2));
        assert_eq!(secs_into_month(t), 28.0 * 86_400.0 + 3600.0);
        assert_eq!((days_in_month(2000, 2), days_in_month(1900, 2), days_in_month(2026, 11)), (29, 28, 30));
    }
}

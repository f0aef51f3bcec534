//! Five-field cron expressions (`minute hour day-of-month month day-of-week`), as crontab(5):
//! `*`, `a-b`, lists, `*/n` and `a-b/n` steps, month and weekday names, 0 or 7 = Sunday. When both
//! day-of-month and day-of-week are restricted, either may match (Vixie cron).

/// A parsed expression: one bit per allowed value of each field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    dom_any: bool,
    dow_any: bool,
}

const MONTHS: [&str; 12] = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

impl Cron {
    pub fn parse(s: &str) -> Result<Self, String> {
        let fields: Vec<&str> = s.split_whitespace().collect();
        let [min, hour, dom, month, dow] = fields[..] else {
            return Err(format!("{s:?} needs five fields: minute hour day-of-month month day-of-week"));
        };
        let weekdays = field(dow, 0, 7, &DAYS, 0, "day-of-week")?;
        Ok(Self {
            minutes: field(min, 0, 59, &[], 0, "minute")?,
            hours: field(hour, 0, 23, &[], 0, "hour")? as u32,
            days: field(dom, 1, 31, &[], 0, "day-of-month")? as u32,
            months: field(month, 1, 12, &MONTHS, 1, "month")? as u16,
            // 7 is Sunday too.
            weekdays: ((weekdays | (weekdays >> 7)) & 0x7f) as u8,
            dom_any: dom == "*",
            dow_any: dow == "*",
        })
    }

    /// Does this local minute match? `weekday` is 0 = Sunday .. 6 = Saturday.
    pub fn matches(&self, minute: u32, hour: u32, day: u32, month: u32, weekday: u32) -> bool {
        let dom = self.days & (1 << day) != 0;
        let dow = self.weekdays & (1 << weekday) != 0;
        let day_ok = match (self.dom_any, self.dow_any) {
            (false, false) => dom || dow,
            _ => dom && dow,
        };
        self.minutes & (1 << minute) != 0 && self.hours & (1 << hour) != 0 && self.months & (1 << month) != 0 && day_ok
    }
}

/// One field as a bit set over [lo, hi]; `names[i]` stands for `base + i`.
fn field(s: &str, lo: u32, hi: u32, names: &[&str], base: u32, what: &str) -> Result<u64, String> {
    let value = |t: &str| -> Result<u32, String> {
        let lower = t.to_ascii_lowercase();
        if let Some(i) = names.iter().position(|n| *n == lower) {
            return Ok(base + i as u32);
        }
        match t.parse::<u32>() {
            Ok(v) if (lo..=hi).contains(&v) => Ok(v),
            _ => Err(format!("{what} {t:?} must be {lo}-{hi}{}", if names.is_empty() { "" } else { " or a name" })),
        }
    };
    let mut bits = 0u64;
    for part in s.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, st)) => {
                let st: u32 = st
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("{what} step {st:?} must be a positive number"))?;
                (r, st)
            }
            None => (part, 1),
        };
        let (a, b) = match range {
            "*" => (lo, hi),
            r => match r.split_once('-') {
                Some((a, b)) => (value(a)?, value(b)?),
                None if step > 1 => (value(r)?, hi),
                None => (value(r)?, value(r)?),
            },
        };
        if a > b {
            return Err(format!("{what} range {range:?} is backwards"));
        }
        let mut v = a;
        while v <= b {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weekday_mornings() {
        let c = Cron::parse("0 8 * * MON-FRI").unwrap();
        // 2026-11-30 is a Monday, 2026-11-29 a Sunday.
        assert!(c.matches(0, 8, 30, 11, 1));
        assert!(!c.matches(1, 8, 30, 11, 1));
        assert!(!c.matches(0, 8, 29, 11, 0));
        let every = Cron::parse("*/15 * * * *").unwrap();
        assert!(every.matches(45, 3, 1, 1, 3) && !every.matches(50, 3, 1, 1, 3));
        let sunday = Cron::parse("30 2 * jan,dec 7").unwrap();
        assert!(sunday.matches(30, 2, 5, 12, 0) && !sunday.matches(30, 2, 5, 11, 0));
        // Both day fields restricted: either matches.
        let either = Cron::parse("0 0 1 * mon").unwrap();
        assert!(either.matches(0, 0, 1, 5, 4) && either.matches(0, 0, 9, 5, 1) && !either.matches(0, 0, 9, 5, 2));
    }

    #[test]
    fn errors() {
        assert!(Cron::parse("0 8 * *").unwrap_err().contains("five fields"));
        assert!(Cron::parse("61 * * * *").unwrap_err().contains("minute \"61\" must be 0-59"));
        assert!(Cron::parse("0 8 * * FUNDAY").unwrap_err().contains("day-of-week"));
        assert!(Cron::parse("0 9-8 * * *").unwrap_err().contains("backwards"));
        assert!(Cron::parse("*/0 * * * *").unwrap_err().contains("step"));
    }
}

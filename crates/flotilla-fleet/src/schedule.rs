//! Scheduled actions: each minute a cron expression matches in its time zone, set the group's
//! min, max and/or desired. Used by the live group and by `flotilla simulate` (trace time).
//!
//! The only state is the last minute considered. A live group saves it (with `[watch] data_dir`)
//! and `resume`s from it after a restart: minutes already considered are not run again, and
//! those that passed while flotilla was down are (up to a week back).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flotilla_config::ScheduleConfig;
use jiff::tz::TimeZone;

/// Minutes replayed after a pause (a suspended machine, a stalled loop); older ones are skipped.
const MAX_CATCH_UP: i64 = 60;
/// Minutes replayed after a restart: the actions due while flotilla was down, so the bounds in
/// force are those the schedule says. Longer downtimes start from the last week's actions.
pub const RESTART_CATCH_UP: i64 = 7 * 24 * 60;

pub struct Scheduler {
    entries: Vec<(ScheduleConfig, TimeZone)>,
    /// The last minute (since the epoch) already considered.
    last_minute: i64,
    /// How far back the next `due` may reach.
    catch_up: i64,
}

/// New bounds after applying one action to (min, max, desired).
pub fn apply(s: &ScheduleConfig, min: u32, max: u32, desired: u32) -> (u32, u32, u32) {
    let min = s.min.unwrap_or(min);
    let max = s.max.unwrap_or(max).max(min);
    let min = min.min(max);
    (min, max, s.desired.unwrap_or(desired).clamp(min, max))
}

impl Scheduler {
    /// Starts at `now`: actions whose time has already passed do not fire.
    pub fn new(schedules: &[ScheduleConfig], now: SystemTime) -> Self {
        let entries = schedules
            .iter()
            .map(|s| {
                // Validated at config load; UTC only if the zone vanished since.
                let tz = TimeZone::get(&s.timezone).unwrap_or_else(|e| {
                    tracing::warn!(timezone = %s.timezone, error = %e, "time zone not found; using UTC");
                    TimeZone::UTC
                });
                (s.clone(), tz)
            })
            .collect();
        Self { entries, last_minute: minute_of(now), catch_up: MAX_CATCH_UP }
    }

    /// Continues from a saved `last_minute` (see `last_minute`): the next `due` returns the
    /// actions of the minutes after it, up to `RESTART_CATCH_UP` back, none twice.
    pub fn resume(schedules: &[ScheduleConfig], last_minute: i64, now: SystemTime) -> Self {
        let mut s = Self::new(schedules, now);
        if last_minute < s.last_minute {
            s.last_minute = last_minute;
            s.catch_up = RESTART_CATCH_UP;
        }
        s
    }

    /// The last minute (since the epoch) already considered: what a restart resumes from.
    pub fn last_minute(&self) -> i64 {
        self.last_minute
    }

    /// The actions due in the minutes since the last call, oldest first.
    pub fn due(&mut self, now: SystemTime) -> Vec<&ScheduleConfig> {
        let current = minute_of(now);
        let first = (self.last_minute + 1).max(current - self.catch_up + 1);
        self.last_minute = self.last_minute.max(current);
        self.catch_up = MAX_CATCH_UP;
        let mut out = Vec::new();
        for minute in first..=current {
            for (s, tz) in &self.entries {
                let Ok(ts) = jiff::Timestamp::from_second(minute * 60) else { continue };
                let local = tz.to_datetime(ts);
                let weekday = local.weekday().to_sunday_zero_offset() as u32;
                if s.cron.matches(
                    local.minute() as u32,
                    local.hour() as u32,
                    local.day() as u32,
                    local.month() as u32,
                    weekday,
                ) {
                    out.push(s);
                }
            }
        }
        out
    }
}

fn minute_of(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() / 60) as i64,
        Err(_) => 0,
    }
}

/// A `SystemTime` from seconds since the epoch (for simulations on trace time).
pub fn at(secs: f64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs_f64(secs.max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_config::cron::Cron;

    fn sched(cron: &str, tz: &str, min: Option<u32>) -> ScheduleConfig {
        ScheduleConfig {
            cron: Cron::parse(cron).unwrap(),
            cron_text: cron.into(),
            timezone: tz.into(),
            min,
            max: None,
            desired: None,
        }
    }

    #[test]
    fn fires_at_local_time_once() {
        // 2026-11-30 is a Monday; 08:00 in Berlin (CET, UTC+1) is 07:00 UTC = 1_796_022_000.
        let monday_0700_utc = 1_796_022_000.0;
        let s = [sched("0 8 * * MON-FRI", "Europe/Berlin", Some(4))];
        let mut sch = Scheduler::new(&s, at(monday_0700_utc - 120.0));
        assert!(sch.due(at(monday_0700_utc - 60.0)).is_empty());
        assert_eq!(sch.due(at(monday_0700_utc + 5.0)).len(), 1);
        assert!(sch.due(at(monday_0700_utc + 30.0)).is_empty(), "fires once per matching minute");
        // Sunday 08:00 Berlin does not match.
        let mut sch = Scheduler::new(&s, at(monday_0700_utc - 86_400.0 - 60.0));
        assert!(sch.due(at(monday_0700_utc - 86_400.0 + 5.0)).is_empty());
        // A long pause replays at most an hour.
        let every = [sched("* * * * *", "UTC", Some(1))];
        let mut sch = Scheduler::new(&every, at(0.0));
        assert_eq!(sch.due(at(10.0 * 3600.0)).len(), 60);
    }

    #[test]
    fn a_resumed_scheduler_runs_what_was_missed_and_nothing_twice() {
        let monday_0700_utc = 1_796_022_000.0;
        let s = [sched("0 8 * * MON-FRI", "Europe/Berlin", Some(4)), sched("0 20 * * *", "Europe/Berlin", Some(1))];
        let mut sch = Scheduler::new(&s, at(monday_0700_utc - 120.0));
        assert_eq!(sch.due(at(monday_0700_utc + 5.0)).len(), 1, "08:00 applied");
        let saved = sch.last_minute();
        // Restarted two minutes later: 08:00 is not applied again.
        let mut again = Scheduler::resume(&s, saved, at(monday_0700_utc + 120.0));
        assert!(again.due(at(monday_0700_utc + 125.0)).is_empty());
        // Down from 19:00 to 21:30: the 20:00 action comes due at start, once.
        let evening = monday_0700_utc + 11.0 * 3600.0; // 19:00 in Berlin
        let mut sch = Scheduler::new(&s, at(evening - 60.0));
        assert!(sch.due(at(evening)).is_empty());
        let mut again = Scheduler::resume(&s, sch.last_minute(), at(evening + 2.5 * 3600.0));
        let due: Vec<_> = again.due(at(evening + 2.5 * 3600.0)).into_iter().map(|s| s.min).collect();
        assert_eq!(due, vec![Some(1)]);
        assert!(again.due(at(evening + 2.5 * 3600.0 + 60.0)).is_empty());
        // A saved minute from the future (a clock set back) changes nothing.
        let sch = Scheduler::resume(&s, i64::MAX, at(evening));
        assert_eq!(sch.last_minute(), minute_of(at(evening)));
    }

    #[test]
    fn apply_keeps_bounds_consistent() {
        let mut s = sched("* * * * *", "UTC", Some(6));
        assert_eq!(apply(&s, 2, 4, 3), (6, 6, 6));
        s.min = None;
        s.desired = Some(1);
        assert_eq!(apply(&s, 2, 10, 5), (2, 10, 2));
    }
}

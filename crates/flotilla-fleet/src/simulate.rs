//! `flotilla simulate`: replays a request-rate trace through a group's policies (the same
//! [`Scaler`] the live group runs) and scores the result against a perfect-foresight oracle.
//!
//! The model is fixed so results compare with other simulators: demand per minute = value /
//! bucket minutes, linearly interpolated between bucket mid-points; each instance serves `C`
//! requests/minute at 100 % CPU, `C` = the P-th percentile minute / N instances; CPU of ready
//! instances = served / (ready × C), capped at 100; billing starts at launch, readiness `startup`
//! later; 15 s ticks; a minute is under capacity when demand exceeds ready capacity at any tick.

use std::time::Duration;

use flotilla_config::GroupConfig;
use serde::Serialize;

use crate::policy::{Observation, Scaler, CPU, REQUESTS_PER_TARGET};
use crate::schedule::{self, Scheduler};

pub const TICK: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("line {line}: {msg}")]
    Line { line: usize, msg: String },
    #[error("the trace needs at least two rows of `timestamp,value`")]
    TooShort,
}

/// A parsed trace: demand in requests per minute at bucket mid-points (seconds since the epoch).
#[derive(Debug, Clone)]
pub struct Trace {
    pub bucket: Duration,
    points: Vec<(f64, f64)>,
}

impl Trace {
    /// Parses `timestamp,value` CSV (a header row is skipped). Timestamps are
    /// `YYYY-MM-DD HH:MM:SS` (or `T`-separated) or Unix seconds; the bucket size is the median
    /// spacing, so a few missing rows do not matter.
    pub fn parse(text: &str) -> Result<Self, TraceError> {
        let mut rows = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || (i == 0 && line.to_ascii_lowercase().starts_with("timestamp")) {
                continue;
            }
            let err = |msg: String| TraceError::Line { line: i + 1, msg };
            let (ts, value) = line.split_once(',').ok_or_else(|| err("expected `timestamp,value`".into()))?;
            let ts = parse_timestamp(ts.trim()).ok_or_else(|| err(format!("bad timestamp {ts:?}")))?;
            let value: f64 = value.trim().parse().map_err(|_| err(format!("bad value {value:?}")))?;
            if !value.is_finite() || value < 0.0 {
                return Err(err(format!("value {value} must be a non-negative number")));
            }
            rows.push((ts, value));
        }
        rows.sort_by(|a, b| a.0.total_cmp(&b.0));
        rows.dedup_by(|a, b| a.0 == b.0);
        if rows.len() < 2 {
            return Err(TraceError::TooShort);
        }
        let mut gaps: Vec<f64> = rows.windows(2).map(|w| w[1].0 - w[0].0).collect();
        gaps.sort_by(f64::total_cmp);
        let bucket = gaps[(gaps.len() - 1) / 2].max(1.0);
        let minutes = bucket / 60.0;
        let points = rows.into_iter().map(|(t, v)| (t + bucket / 2.0, v / minutes)).collect();
        Ok(Self { bucket: Duration::from_secs_f64(bucket), points })
    }

    pub fn start(&self) -> f64 {
        self.points[0].0
    }

    pub fn end(&self) -> f64 {
        self.points[self.points.len() - 1].0
    }

    /// Requests per minute at `t` (seconds since the epoch), linear between mid-points.
    pub fn demand_at(&self, t: f64, hint: &mut usize) -> f64 {
        let p = &self.points;
        while *hint + 1 < p.len() && p[*hint + 1].0 <= t {
            *hint += 1;
        }
        let (t0, v0) = p[*hint];
        match p.get(*hint + 1) {
            Some(&(t1, v1)) if t > t0 => v0 + (v1 - v0) * (t - t0) / (t1 - t0),
            _ => v0,
        }
    }
}

/// Seconds since the epoch as RFC 3339 (UTC), for printing actions.
pub fn format_time(secs: f64) -> String {
    crate::time::rfc3339(std::time::UNIX_EPOCH + Duration::from_secs_f64(secs.max(0.0)))
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) or Unix seconds → seconds since the epoch.
fn parse_timestamp(s: &str) -> Option<f64> {
    if let Ok(n) = s.parse::<f64>() {
        return Some(n);
    }
    let (date, time) = s.split_once([' ', 'T'])?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.trim_end_matches('Z').split(':').map(|x| x.parse::<f64>().ok());
    let (h, min) = (t.next()??, t.next()??);
    let sec = t.next().flatten().unwrap_or(0.0);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return None;
    }
    Some(days_from_civil(y, m, day) as f64 * 86_400.0 + h * 3600.0 + min * 60.0 + sec)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The knobs of the model (`flotilla simulate` flags).
#[derive(Debug, Clone)]
pub struct Model {
    pub peak_percentile: f64,
    pub peak_instances: f64,
    pub startup: Duration,
    pub min: Option<u32>,
    pub max: Option<u32>,
}

impl Default for Model {
    fn default() -> Self {
        Self { peak_percentile: 100.0, peak_instances: 8.0, startup: Duration::from_secs(60), min: None, max: None }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub instance_hours: f64,
    pub under_capacity_minutes: u64,
    pub scaling_actions: u64,
    pub oracle_instance_hours: f64,
    /// Requests per minute one instance serves at 100 % CPU.
    pub capacity_per_instance: f64,
    pub minutes: u64,
    pub peak_instances: u32,
    /// Every capacity change, in order.
    #[serde(skip)]
    pub actions: Vec<Action>,
}

/// One capacity change in a simulation.
#[derive(Debug, Clone, PartialEq)]
pub struct Action {
    /// Seconds since the epoch (the trace's clock).
    pub at: f64,
    pub from: u32,
    pub to: u32,
    pub cause: String,
}

/// Runs the group's policies over the trace.
pub fn run(trace: &Trace, group: &GroupConfig, model: &Model) -> Report {
    let (min, max) = (model.min.unwrap_or(group.min), model.max.unwrap_or(group.max).max(1));
    let (mut min, mut max) = (min.min(max), max);
    let c = per_instance_capacity(trace, model);
    let tick = TICK.as_secs_f64();
    let startup = model.startup.as_secs_f64();
    let (t0, t_end) = (trace.start(), trace.end());
    let ticks = ((t_end - t0) / tick).floor() as usize + 1;
    let mut hint = 0;
    let demand: Vec<f64> = (0..ticks).map(|i| trace.demand_at(t0 + i as f64 * tick, &mut hint)).collect();
    // The oracle keeps the configured bounds; scheduled actions only move the policy's.
    let (base_min, base_max) = (min, max);
    let need = |d: f64| ((d / c).ceil() as u32).clamp(base_min, base_max);
    let mut scheduler = Scheduler::new(&group.schedules, schedule::at(t0 - 1.0));

    let mut scaler = Scaler::new(&group.policies, group.cooldown);
    // Instances by launch time (seconds since t0); the initial ones are ready at t0.
    let initial = need(demand[0]);
    let mut launched: Vec<f64> = vec![-startup; initial as usize];
    let mut capacity = initial;
    let mut billed_secs = 0.0;
    let mut actions = Vec::new();
    let mut under_minutes = 0;
    let mut last_under_minute = u64::MAX;
    let mut peak = initial;
    for (i, &d) in demand.iter().enumerate() {
        let now = i as f64 * tick;
        let ready = launched.iter().filter(|&&l| l + startup <= now).count() as u32;
        let cap = ready as f64 * c;
        if d > cap + 1e-9 {
            let minute = (now / 60.0) as u64;
            if minute != last_under_minute {
                under_minutes += 1;
                last_under_minute = minute;
            }
        }
        let cpu = (ready > 0).then(|| if cap > 0.0 { (d.min(cap) / cap * 100.0).min(100.0) } else { 0.0 });
        let rpt = (ready > 0).then(|| d / ready as f64);
        let metric = |name: &str| match name {
            CPU => cpu,
            REQUESTS_PER_TARGET => rpt,
            _ => None,
        };
        for sc in scheduler.due(schedule::at(t0 + now)) {
            let (lo, hi, desired) = schedule::apply(sc, min, max, capacity);
            (min, max) = (lo, hi);
            if desired != capacity {
                let cause = format!("scheduled action \"{}\"", sc.cron_text);
                actions.push(Action { at: t0 + now, from: capacity, to: desired, cause });
                capacity = desired;
            }
        }
        let obs = Observation { now: Duration::from_secs_f64(now), capacity, min, max, ready, metric: &metric };
        if let Some(decision) = scaler.evaluate(&obs) {
            actions.push(Action { at: t0 + now, from: capacity, to: decision.desired, cause: decision.cause });
            capacity = decision.desired;
        }
        // Launch or terminate to match capacity: terminate not-yet-ready (newest) first.
        while (launched.len() as u32) < capacity {
            launched.push(now);
        }
        if (launched.len() as u32) > capacity {
            launched.sort_by(f64::total_cmp);
            launched.truncate(capacity as usize);
        }
        peak = peak.max(capacity);
        billed_secs += launched.len() as f64 * tick;
    }
    Report {
        instance_hours: billed_secs / 3600.0,
        under_capacity_minutes: under_minutes,
        scaling_actions: actions.len() as u64,
        oracle_instance_hours: oracle_secs(&demand.iter().map(|&d| need(d)).collect::<Vec<_>>(), tick, startup)
            / 3600.0,
        capacity_per_instance: c,
        minutes: (ticks as f64 * tick / 60.0).ceil() as u64,
        peak_instances: peak,
        actions,
    }
}

/// `C`: the P-th percentile of per-minute demand divided by the peak instance count.
fn per_instance_capacity(trace: &Trace, model: &Model) -> f64 {
    let mut hint = 0;
    let mut minutes: Vec<f64> = Vec::new();
    let mut t = trace.start();
    while t <= trace.end() {
        minutes.push(trace.demand_at(t, &mut hint));
        t += 60.0;
    }
    minutes.sort_by(f64::total_cmp);
    let p = model.peak_percentile.clamp(0.0, 100.0) / 100.0;
    let idx = ((minutes.len() - 1) as f64 * p).round() as usize;
    (minutes[idx] / model.peak_instances.max(0.01)).max(1e-9)
}

/// The least instance-seconds that meet `need` at every tick with perfect foresight. Instance
/// "slot" k is needed on the ticks where need ≥ k; each stretch of need costs its length plus one
/// start-up (except a stretch at t0, whose instances already run), and a gap shorter than the
/// start-up is cheaper to keep running than to relaunch across. Slots are independent.
fn oracle_secs(need: &[u32], tick: f64, startup: f64) -> f64 {
    let top = need.iter().copied().max().unwrap_or(0);
    let mut total = 0.0;
    for k in 1..=top {
        let mut running_since: Option<usize> = None; // start tick of the current stretch
        let mut last_needed: Option<usize> = None;
        for (i, &n) in need.iter().enumerate() {
            if n < k {
                continue;
            }
            match (running_since, last_needed) {
                (Some(_), Some(prev)) if (i - prev - 1) as f64 * tick <= startup => {}
                (Some(start), Some(prev)) => {
                    total += stretch(start, prev, tick, startup);
                    running_since = Some(i);
                }
                _ => running_since = Some(i),
            }
            last_needed = Some(i);
        }
        if let (Some(start), Some(prev)) = (running_since, last_needed) {
            total += stretch(start, prev, tick, startup);
        }
    }
    total
}

fn stretch(start: usize, last: usize, tick: f64, startup: f64) -> f64 {
    (last - start + 1) as f64 * tick + if start == 0 { 0.0 } else { startup }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_and_buckets() {
        assert_eq!(parse_timestamp("1970-01-02 00:00:00"), Some(86_400.0));
        assert_eq!(parse_timestamp("2014-07-01 00:30:00"), Some(1_404_174_600.0));
        assert_eq!(parse_timestamp("1404174600"), Some(1_404_174_600.0));
        assert_eq!(parse_timestamp("2014-13-01 00:00:00"), None);
        let t = Trace::parse("timestamp,value\n2014-07-01 00:00:00,300\n2014-07-01 00:05:00,600\n2014-07-01 00:15:00,300\n2014-07-01 00:20:00,300\n")
            .unwrap();
        assert_eq!(t.bucket, Duration::from_secs(300));
        let mut h = 0;
        // 300 per 5 min = 60/min at the first mid-point, 120/min at the second, halfway between = 90.
        assert_eq!(t.demand_at(t.start(), &mut h), 60.0);
        assert_eq!(t.demand_at(t.start() + 150.0, &mut h), 90.0);
        assert!(matches!(Trace::parse("timestamp,value\nx,1\n"), Err(TraceError::Line { line: 2, .. })));
    }

    #[test]
    fn oracle_keeps_short_gaps_and_pays_startup() {
        // One slot needed for ticks 0-1, then again at 3 (gap 15 s < 60 s start-up: keep it).
        assert_eq!(oracle_secs(&[1, 1, 0, 1], 15.0, 60.0), 60.0);
        // Gap of 6 ticks (90 s) > start-up: stop and relaunch, paying 60 s.
        assert_eq!(oracle_secs(&[1, 0, 0, 0, 0, 0, 0, 1], 15.0, 60.0), 15.0 + 15.0 + 60.0);
        // A second slot that appears later pays its start-up once.
        assert_eq!(oracle_secs(&[1, 2, 2], 15.0, 60.0), 45.0 + 30.0 + 60.0);
    }
}

//! Instance refresh: replace every instance that runs an older launch template, a batch at a
//! time, keeping `min_healthy_percentage` of desired capacity in service; pause at checkpoints;
//! roll back to the previous template if new instances fail.
//!
//! It works with the reconcile loop rather than beside it: a step drains a batch of old
//! instances, the loop's usual "fewer than desired" launch replaces them with the current
//! template, and the next batch waits until those are in service. Draining keeps it free of
//! failed requests.

use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::time::rfc3339;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RefreshStatus {
    InProgress,
    /// Waiting at a checkpoint.
    Paused,
    RollingBack,
    Successful,
    Failed,
    RolledBack,
    Cancelled,
}

impl RefreshStatus {
    pub fn is_active(self) -> bool {
        matches!(self, RefreshStatus::InProgress | RefreshStatus::Paused | RefreshStatus::RollingBack)
    }
}

/// What `POST /api/v1/groups/{name}/refresh` may set.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RefreshOptions {
    pub min_healthy_percentage: u32,
    /// Percentages of instances replaced at which the refresh pauses for `checkpoint_delay`.
    pub checkpoints: Vec<u32>,
    #[serde(with = "secs")]
    pub checkpoint_delay: Duration,
    pub auto_rollback: bool,
}

impl Default for RefreshOptions {
    fn default() -> Self {
        Self {
            min_healthy_percentage: 90,
            checkpoints: vec![],
            checkpoint_delay: Duration::from_secs(60),
            auto_rollback: true,
        }
    }
}

/// Durations in the API body as seconds (a number) or "30s"-style strings.
mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Lit {
        Secs(f64),
        Text(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        match Lit::deserialize(d)? {
            Lit::Secs(s) if s >= 0.0 && s.is_finite() => Ok(Duration::from_secs_f64(s)),
            Lit::Secs(s) => Err(serde::de::Error::custom(format!("{s} is not a duration"))),
            Lit::Text(t) => flotilla_config::units::parse_duration(&t).map_err(serde::de::Error::custom),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RefreshView {
    pub id: u64,
    pub status: RefreshStatus,
    pub from_version: u32,
    pub to_version: u32,
    pub min_healthy_percentage: u32,
    pub instances_to_update: u32,
    pub percent_complete: u32,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub reason: Option<String>,
}

pub struct Refresh {
    pub view: RefreshView,
    pub opts: RefreshOptions,
    /// The version instances are being moved to (the previous one while rolling back).
    pub target: u32,
    /// Checkpoints not reached yet.
    pending_checkpoints: Vec<u32>,
    pub paused_until: Option<Instant>,
    /// New-template instances that failed to launch or to become healthy.
    pub failures: u32,
}

/// One step's answer to the reconcile loop.
pub enum Step {
    Wait,
    /// Drain this many instances still on an old template.
    Replace(usize),
    Done,
    /// New instances fail: go back to `from_version`.
    RollBack,
    Fail(String),
}

/// Failures of new instances before the refresh gives up (or rolls back).
const MAX_FAILURES: u32 = 2;

impl Refresh {
    pub fn new(id: u64, from: u32, to: u32, to_update: u32, opts: RefreshOptions) -> Self {
        let mut pending_checkpoints = opts.checkpoints.clone();
        pending_checkpoints.sort_unstable();
        Self {
            view: RefreshView {
                id,
                status: RefreshStatus::InProgress,
                from_version: from,
                to_version: to,
                min_healthy_percentage: opts.min_healthy_percentage,
                instances_to_update: to_update,
                percent_complete: if to_update == 0 { 100 } else { 0 },
                started_at: rfc3339(SystemTime::now()),
                ended_at: None,
                reason: None,
            },
            opts,
            target: to,
            pending_checkpoints,
            paused_until: None,
            failures: 0,
        }
    }

    /// Decides the next move from the group's counts: `old` live instances on other templates,
    /// `new_pending` launched on the target template and not yet in service, `in_service`
    /// instances, `desired` capacity.
    pub fn step(&mut self, old: u32, new_pending: u32, in_service: u32, desired: u32) -> Step {
        if self.failures >= MAX_FAILURES {
            return if self.opts.auto_rollback && self.view.status == RefreshStatus::InProgress {
                Step::RollBack
            } else {
                Step::Fail(format!("{} new instances failed to launch or to pass health checks", self.failures))
            };
        }
        let total = self.view.instances_to_update.max(1);
        let replaced = total.saturating_sub(old);
        if self.view.status != RefreshStatus::RollingBack {
            self.view.percent_complete = (replaced * 100 / total).min(100);
        }
        if old == 0 {
            return if new_pending == 0 && in_service >= desired { Step::Done } else { Step::Wait };
        }
        if let Some(until) = self.paused_until {
            if Instant::now() < until {
                return Step::Wait;
            }
            self.paused_until = None;
            self.view.status = RefreshStatus::InProgress;
        }
        if let Some(&cp) = self.pending_checkpoints.first() {
            if self.view.percent_complete >= cp && new_pending == 0 {
                self.pending_checkpoints.remove(0);
                self.paused_until = Some(Instant::now() + self.opts.checkpoint_delay);
                self.view.status = RefreshStatus::Paused;
                return Step::Wait;
            }
        }
        if new_pending > 0 {
            return Step::Wait; // the last batch's replacements are not in service yet
        }
        let min_healthy = (desired * self.opts.min_healthy_percentage).div_ceil(100);
        let batch = in_service.saturating_sub(min_healthy).max(1).min(old);
        // Never take the last in-service instances out while replacements are missing.
        if in_service < desired && in_service <= min_healthy && in_service > 0 {
            return Step::Wait;
        }
        Step::Replace(batch as usize)
    }

    pub fn finish(&mut self, status: RefreshStatus, reason: Option<String>) {
        self.view.status = status;
        self.view.ended_at = Some(rfc3339(SystemTime::now()));
        self.view.reason = reason;
        if status == RefreshStatus::Successful {
            self.view.percent_complete = 100;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(min: u32) -> RefreshOptions {
        RefreshOptions { min_healthy_percentage: min, ..RefreshOptions::default() }
    }

    #[test]
    fn batches_keep_min_healthy() {
        // 4 instances at 50 %: two at a time.
        let mut r = Refresh::new(1, 1, 2, 4, opts(50));
        assert!(matches!(r.step(4, 0, 4, 4), Step::Replace(2)));
        // Replacements launching: wait.
        assert!(matches!(r.step(2, 2, 2, 4), Step::Wait));
        assert_eq!(r.view.percent_complete, 50);
        assert!(matches!(r.step(2, 0, 4, 4), Step::Replace(2)));
        assert!(matches!(r.step(0, 2, 2, 4), Step::Wait));
        assert!(matches!(r.step(0, 0, 4, 4), Step::Done));
        // At 90 % (and 100 %) one at a time.
        let mut r = Refresh::new(1, 1, 2, 4, opts(90));
        assert!(matches!(r.step(4, 0, 4, 4), Step::Replace(1)));
    }

    #[test]
    fn failures_roll_back_once_then_fail() {
        let mut r = Refresh::new(1, 1, 2, 2, opts(90));
        r.failures = 2;
        assert!(matches!(r.step(2, 1, 2, 2), Step::RollBack));
        r.view.status = RefreshStatus::RollingBack;
        assert!(matches!(r.step(2, 1, 2, 2), Step::Fail(_)));
    }

    #[test]
    fn checkpoint_pauses() {
        let mut r = Refresh::new(1, 1, 2, 2, RefreshOptions { checkpoints: vec![50], ..opts(50) });
        assert!(matches!(r.step(2, 0, 2, 2), Step::Replace(1)));
        assert!(matches!(r.step(1, 0, 2, 2), Step::Wait));
        assert_eq!(r.view.status, RefreshStatus::Paused);
    }
}

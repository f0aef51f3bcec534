//! Scaling decisions, as pure code: the live group and `flotilla simulate` feed the same
//! [`Scaler`] observations and get the same answers, so a policy tried on a trace behaves the
//! same in production.
//!
//! Combination rule (as AWS does with several policies): the largest scale-out wins; a scale-in
//! happens only when no target-tracking policy wants to keep the current capacity. The group's
//! bounds are applied inside [`Scaler::evaluate`], so neither caller can forget them.
//!
//! By job: [`scaler`] combines the policies, clamps, and hands its state over; [`step`] is the
//! step policy (an alarm on the watch's engine); [`tracking`] is target tracking, which sizes
//! from [`predictive`]'s demand model when asked to.

mod predictive;
mod scaler;
mod step;
mod tracking;

use std::time::Duration;

pub use scaler::{PolicySaved, Scaler, ScalerSaved};

/// Metric names the policies understand besides any custom metric the caller supplies.
pub const CPU: &str = "cpu";
pub const REQUESTS_PER_TARGET: &str = "requests_per_target";
/// The target group's 95th percentile latency in milliseconds (from the watch).
pub const LATENCY_P95: &str = "latency_p95";

/// What the group looks like at one evaluation.
pub struct Observation<'a> {
    /// Time since the scaler started.
    pub now: Duration,
    /// The current desired capacity.
    pub capacity: u32,
    /// The group's bounds now (a scheduled action may have moved them): no decision leaves them.
    pub min: u32,
    pub max: u32,
    /// In-service instances whose warm-up has passed: the ones the metrics describe.
    pub ready: u32,
    /// The group's value of a metric (per-instance metrics averaged over the ready instances),
    /// or None when there is no data.
    pub metric: &'a dyn Fn(&str) -> Option<f64>,
}

/// A capacity change and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub desired: u32,
    pub cause: String,
}

/// One policy's answer at one evaluation, before the policies are combined.
struct Proposal {
    desired: u32,
    cause: String,
}

#[cfg(test)]
mod testkit {
    //! Policies and a driver shared by the policy tests.

    use std::time::Duration;

    use flotilla_config::{Adjustment, Comparison, MissingData, PolicyConfig, Statistic, StepPolicy, TargetTracking};

    use super::{Observation, Scaler, CPU};

    pub fn step(threshold: f64, comparison: Comparison, adjustment: Adjustment) -> PolicyConfig {
        PolicyConfig::Step(StepPolicy {
            metric: CPU.into(),
            statistic: Statistic::Avg,
            period: Duration::from_secs(60),
            evaluation_periods: 4,
            datapoints_to_alarm: 4,
            threshold,
            comparison,
            adjustment,
            missing_data: MissingData::Missing,
        })
    }

    pub fn tracking(target: f64) -> PolicyConfig {
        PolicyConfig::TargetTracking(TargetTracking {
            metric: CPU.into(),
            target,
            tolerance: 0.1,
            scale_in_stabilization: Duration::from_secs(300),
            scale_out_stabilization: Duration::ZERO,
            scale_in_cooldown: Duration::ZERO,
            disable_scale_in: false,
            max_scale_in_fraction: 1.0,
            headroom: 0.0,
            predictive: false,
            noise_margin: 0.5,
            scale_in_margin: 0.3,
        })
    }

    /// Feeds `cpu` every 15 s from `from` to `to` seconds (bounds 0..=100); returns the
    /// decisions with their times.
    pub fn run(s: &mut Scaler, cap: &mut u32, from: u64, to: u64, cpu: f64) -> Vec<(u64, u32)> {
        run_within(s, cap, (0, 100), from, to, cpu)
    }

    /// `run` with the group's bounds.
    pub fn run_within(
        s: &mut Scaler,
        cap: &mut u32,
        (min, max): (u32, u32),
        from: u64,
        to: u64,
        cpu: f64,
    ) -> Vec<(u64, u32)> {
        let mut out = vec![];
        for t in (from..to).step_by(15) {
            let metric = |name: &str| (name == CPU).then_some(cpu);
            let obs =
                Observation { now: Duration::from_secs(t), capacity: *cap, min, max, ready: *cap, metric: &metric };
            if let Some(d) = s.evaluate(&obs) {
                *cap = d.desired;
                out.push((t, d.desired));
            }
        }
        out
    }
}

//! Step policies: a metric's datapoint per period goes into the watch's alarm engine (the same
//! CloudWatch evaluation `[[alarms]]` use: M of N, missing data); while the alarm is in ALARM,
//! every period close applies the adjustment (after the cooldown), as ASG step policies do.

use std::time::Duration;

use flotilla_config::{AlarmConfig, AlarmStatistic, Statistic, StepPolicy};
use flotilla_watch::alarm::Alarm;
use flotilla_watch::AlarmState;

use super::{Observation, Proposal};

pub(super) struct StepState {
    pub(super) cfg: StepPolicy,
    period_start: Duration,
    acc: Accumulator,
    pub(super) alarm: Alarm,
}

/// One period's datapoints, reduced to the policy's statistic when the period closes.
#[derive(Default)]
struct Accumulator {
    sum: f64,
    min: f64,
    max: f64,
    count: u32,
}

impl Accumulator {
    fn add(&mut self, v: f64) {
        if self.count == 0 {
            self.min = v;
            self.max = v;
        }
        self.sum += v;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.count += 1;
    }

    fn take(&mut self, stat: Statistic) -> Option<f64> {
        let out = (self.count > 0).then(|| match stat {
            Statistic::Avg => self.sum / self.count as f64,
            Statistic::Min => self.min,
            Statistic::Max => self.max,
            Statistic::Sum => self.sum,
        });
        *self = Accumulator::default();
        out
    }
}

impl StepState {
    pub(super) fn new(cfg: StepPolicy) -> Self {
        let alarm = Alarm::new(AlarmConfig {
            name: format!("step policy on {}", cfg.metric),
            metric: cfg.metric.clone(),
            labels: Default::default(),
            statistic: match cfg.statistic {
                Statistic::Avg => AlarmStatistic::Avg,
                Statistic::Min => AlarmStatistic::Min,
                Statistic::Max => AlarmStatistic::Max,
                Statistic::Sum => AlarmStatistic::Sum,
            },
            period: cfg.period,
            evaluation_periods: cfg.evaluation_periods,
            datapoints_to_alarm: cfg.datapoints_to_alarm,
            threshold: cfg.threshold,
            comparison: cfg.comparison,
            missing_data: cfg.missing_data,
            notify: vec![],
            cluster: false,
        });
        Self { cfg, period_start: Duration::ZERO, acc: Accumulator::default(), alarm }
    }

    pub(super) fn observe(&mut self, obs: &Observation<'_>, cooled: bool) -> Option<Proposal> {
        let mut closed = false;
        while obs.now >= self.period_start + self.cfg.period {
            let dp = self.acc.take(self.cfg.statistic);
            self.alarm.observe(dp, format!("{:?}", self.period_start + self.cfg.period));
            self.period_start += self.cfg.period;
            closed = true;
        }
        if let Some(v) = (obs.metric)(&self.cfg.metric) {
            self.acc.add(v);
        }
        if !closed || self.alarm.state != AlarmState::Alarm || !cooled {
            return None;
        }
        let desired = self.cfg.adjustment.apply(obs.capacity);
        let cause = format!(
            "alarm: {} {} {:?} for {} of {} periods of {:?} ({:?})",
            self.cfg.metric,
            comparison_str(&self.cfg),
            self.cfg.threshold,
            self.cfg.datapoints_to_alarm,
            self.cfg.evaluation_periods,
            self.cfg.period,
            self.cfg.adjustment
        );
        Some(Proposal { desired, cause })
    }
}

fn comparison_str(p: &StepPolicy) -> &'static str {
    use flotilla_config::Comparison::*;
    match p.comparison {
        Greater => ">",
        GreaterOrEqual => ">=",
        Less => "<",
        LessOrEqual => "<=",
    }
}

#[cfg(test)]
mod tests {
    use flotilla_config::{Adjustment, Comparison, PolicyConfig};

    use crate::policy::testkit::{run, step};
    use crate::policy::Scaler;

    use super::*;

    #[test]
    fn step_alarm_needs_four_breaching_periods_then_honours_cooldown() {
        let mut s = Scaler::new(
            &[
                step(70.0, Comparison::Greater, Adjustment::Change(2)),
                step(30.0, Comparison::Less, Adjustment::Change(-1)),
            ],
            Duration::from_secs(300),
        );
        let mut cap = 2;
        // Four 60 s periods of 90 % close at t=240: first action then, next after 300 s cooldown.
        let acts = run(&mut s, &mut cap, 0, 600, 90.0);
        assert_eq!(acts, vec![(240, 4), (540, 6)]);
        // Load stops: the low alarm needs four fresh periods below 30 %, and the cooldown.
        let acts = run(&mut s, &mut cap, 600, 1200, 10.0);
        assert_eq!(acts, vec![(840, 5), (1140, 4)]);
    }

    #[test]
    fn two_of_four_and_missing_data() {
        let mut cfg = step(70.0, Comparison::Greater, Adjustment::Change(1));
        if let PolicyConfig::Step(s) = &mut cfg {
            s.datapoints_to_alarm = 2;
        }
        let mut s = Scaler::new(&[cfg], Duration::ZERO);
        let mut cap = 2;
        // 80, 10, 80 → two breaching datapoints (the fourth period not seen yet counts as
        // missing, as CloudWatch does): in alarm when the third period closes, at 180.
        let mut acts = vec![];
        for (i, cpu) in [80.0, 10.0, 80.0, 10.0].into_iter().enumerate() {
            acts.extend(run(&mut s, &mut cap, i as u64 * 60, i as u64 * 60 + 60, cpu));
        }
        assert_eq!(acts, vec![(180, 3)]);
    }
}

//! Scaling decisions, as pure code: the live group and `flotilla simulate` feed the same
//! [`Scaler`] observations and get the same answers, so a policy tried on a trace behaves the
//! same in production.
//!
//! Combination rule (as AWS does with several policies): the largest scale-out wins; a scale-in
//! happens only when no target-tracking policy wants to keep the current capacity.

use std::collections::VecDeque;
use std::time::Duration;

use flotilla_config::{AlarmConfig, AlarmStatistic, PolicyConfig, Statistic, StepPolicy, TargetTracking};
use flotilla_watch::alarm::Alarm;
use flotilla_watch::AlarmState;
use serde::{Deserialize, Serialize};

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

/// All of a group's policies with their state (alarm datapoints, stabilization windows).
pub struct Scaler {
    policies: Vec<PolicyState>,
    cooldown: Duration,
    last_step_action: Option<Duration>,
}

enum PolicyState {
    Step(StepState),
    Tracking(TrackingState),
}

struct Proposal {
    desired: u32,
    cause: String,
}

impl Scaler {
    pub fn new(policies: &[PolicyConfig], cooldown: Duration) -> Self {
        let policies = policies
            .iter()
            .map(|p| match p {
                PolicyConfig::Step(s) => PolicyState::Step(StepState::new(s.clone())),
                PolicyConfig::TargetTracking(t) => PolicyState::Tracking(TrackingState::new(t.clone())),
            })
            .collect();
        Self { policies, cooldown, last_step_action: None }
    }

    /// When the last step-policy action was taken (on `Observation::now`'s clock), for the
    /// cooldown a new leader of the group must honour.
    pub fn last_step_action(&self) -> Option<Duration> {
        self.last_step_action
    }

    /// Carries a previous leader's last step action over (its cooldown still applies).
    pub fn set_last_step_action(&mut self, at: Option<Duration>) {
        self.last_step_action = at;
    }

    /// Evaluates every policy; returns a new desired capacity (not yet clamped to the group's
    /// bounds) when one should change it.
    pub fn evaluate(&mut self, obs: &Observation<'_>) -> Option<Decision> {
        let cooled = self.last_step_action.is_none_or(|t| obs.now >= t + self.cooldown);
        let mut out: Option<(Proposal, bool)> = None;
        let mut scale_in: Option<(Proposal, bool)> = None;
        let mut tracking_holds = false;
        for p in &mut self.policies {
            let (proposal, is_step) = match p {
                PolicyState::Step(s) => (s.observe(obs, cooled), true),
                PolicyState::Tracking(t) => {
                    let prop = t.observe(obs);
                    if prop.as_ref().is_none_or(|p| p.desired >= obs.capacity) {
                        tracking_holds = true;
                    }
                    (prop, false)
                }
            };
            let Some(proposal) = proposal else { continue };
            if proposal.desired > obs.capacity {
                if out.as_ref().is_none_or(|(o, _)| proposal.desired > o.desired) {
                    out = Some((proposal, is_step));
                }
            } else if proposal.desired < obs.capacity
                && scale_in.as_ref().is_none_or(|(o, _)| proposal.desired > o.desired)
            {
                scale_in = Some((proposal, is_step));
            }
        }
        let chosen = match (out, scale_in) {
            (Some(o), _) => Some(o),
            (None, Some(i)) if !tracking_holds => Some(i),
            _ => None,
        };
        let (proposal, is_step) = chosen?;
        if is_step {
            self.last_step_action = Some(obs.now);
        }
        Some(Decision { desired: proposal.desired, cause: proposal.cause })
    }
}

/// A scaler's state in a form another node can load (a swarm group's next leader): alarm
/// datapoints and states, stabilization windows; times as Unix milliseconds. The partial period
/// in progress is not kept: the next leader starts a fresh one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScalerSaved {
    pub policies: Vec<PolicySaved>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PolicySaved {
    Step {
        metric: String,
        state: AlarmState,
        datapoints: Vec<Option<f64>>,
    },
    Tracking {
        metric: String,
        /// (Unix ms, recommendation) of the stabilization window.
        history: Vec<(u64, u32)>,
        last_scale_in_ms: Option<u64>,
        first_ms: Option<u64>,
    },
}

impl Scaler {
    /// The state to hand over. `epoch_ms` is the Unix time (ms) of this scaler's clock zero,
    /// fixed per loop, so the same state always serializes the same way.
    pub fn export(&self, epoch_ms: u64) -> ScalerSaved {
        let at = |d: Duration| epoch_ms + d.as_millis() as u64;
        let policies = self
            .policies
            .iter()
            .map(|p| match p {
                PolicyState::Step(s) => PolicySaved::Step {
                    metric: s.cfg.metric.clone(),
                    state: s.alarm.state,
                    datapoints: s.alarm.datapoints.iter().copied().collect(),
                },
                PolicyState::Tracking(t) => PolicySaved::Tracking {
                    metric: t.cfg.metric.clone(),
                    history: t.history.iter().map(|(d, r)| (at(*d), *r)).collect(),
                    last_scale_in_ms: t.last_scale_in.map(at),
                    first_ms: t.first.map(at),
                },
            })
            .collect();
        ScalerSaved { policies }
    }

    /// Loads a previous leader's state into policies of the same kind and metric, in order
    /// (a policy the config changed starts fresh). Times before this scaler's clock began count
    /// as its start: windows then hold at least as long as they really would.
    pub fn import(&mut self, saved: &ScalerSaved, epoch_ms: u64) {
        let local = |ms: u64| Duration::from_millis(ms.saturating_sub(epoch_ms));
        for (p, saved) in self.policies.iter_mut().zip(&saved.policies) {
            match (p, saved) {
                (PolicyState::Step(s), PolicySaved::Step { metric, state, datapoints }) if *metric == s.cfg.metric => {
                    let keep = s.cfg.evaluation_periods as usize;
                    let skip = datapoints.len().saturating_sub(keep);
                    s.alarm.datapoints = datapoints.iter().skip(skip).copied().collect();
                    s.alarm.state = *state;
                }
                (PolicyState::Tracking(t), PolicySaved::Tracking { metric, history, last_scale_in_ms, first_ms })
                    if *metric == t.cfg.metric =>
                {
                    t.history = history.iter().map(|(ms, r)| (local(*ms), *r)).collect();
                    t.last_scale_in = last_scale_in_ms.map(local);
                    t.first = first_ms.map(local);
                }
                _ => {}
            }
        }
    }
}

/// A step policy: its metric's datapoint per period goes into the watch's alarm engine (the same
/// CloudWatch evaluation `[[alarms]]` use: M of N, missing data); while the alarm is in ALARM,
/// every period close applies the adjustment (after the cooldown), as ASG step policies do.
struct StepState {
    cfg: StepPolicy,
    period_start: Duration,
    acc: Accumulator,
    alarm: Alarm,
}

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
    fn new(cfg: StepPolicy) -> Self {
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

    fn observe(&mut self, obs: &Observation<'_>, cooled: bool) -> Option<Proposal> {
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
            self.cfg.comparison_str(),
            self.cfg.threshold,
            self.cfg.datapoints_to_alarm,
            self.cfg.evaluation_periods,
            self.cfg.period,
            self.cfg.adjustment
        );
        Some(Proposal { desired, cause })
    }
}

trait ComparisonStr {
    fn comparison_str(&self) -> &'static str;
}

impl ComparisonStr for StepPolicy {
    fn comparison_str(&self) -> &'static str {
        use flotilla_config::Comparison::*;
        match self.comparison {
            Greater => ">",
            GreaterOrEqual => ">=",
            Less => "<",
            LessOrEqual => "<=",
        }
    }
}

/// Proportional sizing: `ceil(ready × value / target)`, within a tolerance, with stabilization
/// windows (the scale-in answer is the highest recommendation of the window, as the HPA does).
struct TrackingState {
    cfg: TargetTracking,
    history: VecDeque<(Duration, u32)>,
    demand: DemandModel,
    last_scale_in: Option<Duration>,
    /// When this tracker first had an answer: no scale-in before a full stabilization window
    /// has been seen, so a fresh group is not shrunk on its first quiet seconds.
    first: Option<Duration>,
}

impl TrackingState {
    fn new(cfg: TargetTracking) -> Self {
        Self { cfg, history: VecDeque::new(), demand: DemandModel::default(), last_scale_in: None, first: None }
    }

    fn observe(&mut self, obs: &Observation<'_>) -> Option<Proposal> {
        let value = (obs.metric)(&self.cfg.metric);
        let (Some(value), true) = (value, obs.ready > 0) else { return None };
        let (raw, shown) = match self.predictive(obs, value) {
            Some(needed) => {
                // Sized from modelled demand: no tolerance band needed, the model already
                // includes the noise margin.
                let mut want = needed.ceil().max(1.0) as u32;
                // Scale in only when the smaller group would still have `scale_in_margin` spare:
                // otherwise noise flips the group between two sizes.
                if want < obs.capacity && needed * (1.0 + self.cfg.scale_in_margin) > (obs.capacity - 1) as f64 {
                    want = obs.capacity;
                }
                (want, needed / obs.ready as f64 * self.cfg.target)
            }
            None => (self.proportional(obs, value), value),
        };
        let value = shown;
        self.first.get_or_insert(obs.now);
        self.history.push_back((obs.now, raw));
        let window = self.cfg.scale_in_stabilization.max(self.cfg.scale_out_stabilization);
        while self.history.front().is_some_and(|(t, _)| *t + window < obs.now) {
            self.history.pop_front();
        }
        let within = |w: Duration| self.history.iter().filter(move |(t, _)| *t + w >= obs.now).map(|(_, r)| *r);
        let mut desired = raw;
        if raw > obs.capacity {
            // Scale out to the lowest recommendation of the scale-out window (0 s = now).
            desired = within(self.cfg.scale_out_stabilization).min().unwrap_or(raw).max(obs.capacity);
        } else if raw < obs.capacity {
            let cooling = self.last_scale_in.is_some_and(|t| obs.now < t + self.cfg.scale_in_cooldown)
                || self.first.is_some_and(|t| obs.now < t + self.cfg.scale_in_stabilization);
            if self.cfg.disable_scale_in || cooling {
                return Some(Proposal { desired: obs.capacity, cause: String::new() });
            }
            desired = within(self.cfg.scale_in_stabilization).max().unwrap_or(raw).min(obs.capacity);
            let step = ((obs.capacity as f64 * self.cfg.max_scale_in_fraction).floor() as u32).max(1);
            desired = desired.max(obs.capacity.saturating_sub(step));
            if desired < obs.capacity {
                // Counted as done: the group applies it unless a larger proposal wins.
                self.last_scale_in = Some(obs.now);
            }
        }
        let cause = format!(
            "target tracking: {} = {:.1} against target {} with {} ready",
            self.cfg.metric, value, self.cfg.target, obs.ready
        );
        Some(Proposal { desired, cause })
    }
}

impl TrackingState {
    /// `ceil(ready × value / target)` outside the tolerance band, else the current capacity.
    fn proportional(&self, obs: &Observation<'_>, value: f64) -> u32 {
        let ratio = value / self.cfg.target;
        if (ratio - 1.0).abs() <= self.cfg.tolerance {
            return obs.capacity;
        }
        let want = (obs.ready as f64 * ratio).ceil() as u32;
        if want > obs.capacity {
            (obs.ready as f64 * ratio * (1.0 + self.cfg.headroom)).ceil() as u32
        } else if ratio < 1.0 {
            want
        } else {
            // Instances still launching are already on their way: never ask below capacity
            // just because the ready ones are fewer.
            obs.capacity
        }
    }

    /// Instances needed according to the demand model, once it has learned enough.
    fn predictive(&mut self, obs: &Observation<'_>, cpu: f64) -> Option<f64> {
        if !self.cfg.predictive {
            return None;
        }
        self.demand.needed(obs, cpu, self.cfg.target / 100.0 / (1.0 + self.cfg.headroom), self.cfg.noise_margin)
    }
}

/// For `predictive = true` on a CPU target. CPU stops at 100 % when the group is overloaded,
/// which hides how far short it is, so proportional sizing needs several rounds; the request
/// rate keeps counting. The model learns requests-per-instance at 100 % CPU while the group is
/// not saturated, then sizes the group for the demand directly: the recent demand, extrapolated
/// along its trend over the time a new instance takes to be ready, plus a margin of
/// `noise_margin` standard deviations of the recent demand, so a noisy load gets headroom and a
/// steady one does not.
#[derive(Default)]
struct DemandModel {
    /// Requests per target at 100 % CPU (EWMA), once seen.
    per_instance_at_full: Option<f64>,
    /// Recent total demand (time, requests per minute).
    recent: VecDeque<(Duration, f64)>,
}

const SATURATED_CPU: f64 = 90.0;
const TREND_WINDOW: Duration = Duration::from_secs(300);
const NOISE_WINDOW: Duration = Duration::from_secs(1800);
const TREND_HORIZON_SECS: f64 = 180.0;

impl DemandModel {
    fn needed(&mut self, obs: &Observation<'_>, cpu: f64, utilization: f64, sigmas: f64) -> Option<f64> {
        let rpt = (obs.metric)(REQUESTS_PER_TARGET)?;
        if cpu > 1.0 && cpu < SATURATED_CPU {
            let sample = rpt / (cpu / 100.0);
            self.per_instance_at_full = Some(match self.per_instance_at_full {
                Some(k) => 0.8 * k + 0.2 * sample,
                None => sample,
            });
        }
        let total = rpt * obs.ready as f64;
        self.recent.push_back((obs.now, total));
        while self.recent.front().is_some_and(|(t, _)| *t + NOISE_WINDOW < obs.now) {
            self.recent.pop_front();
        }
        let k = self.per_instance_at_full?;
        let trend: VecDeque<(Duration, f64)> =
            self.recent.iter().filter(|(t, _)| *t + TREND_WINDOW >= obs.now).copied().collect();
        let forecast = total + slope_per_sec(&trend).max(0.0) * TREND_HORIZON_SECS;
        let n = self.recent.len() as f64;
        let mean = self.recent.iter().map(|(_, v)| v).sum::<f64>() / n;
        let sd = (self.recent.iter().map(|(_, v)| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
        Some((forecast + sigmas * sd) / (k * utilization))
    }
}

/// Least-squares slope of (seconds, value) points.
fn slope_per_sec(points: &VecDeque<(Duration, f64)>) -> f64 {
    let n = points.len() as f64;
    if n < 3.0 {
        return 0.0;
    }
    let mx = points.iter().map(|(t, _)| t.as_secs_f64()).sum::<f64>() / n;
    let my = points.iter().map(|(_, v)| v).sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for (t, v) in points {
        let dx = t.as_secs_f64() - mx;
        num += dx * (v - my);
        den += dx * dx;
    }
    if den > 0.0 {
        num / den
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_config::{Adjustment, Comparison, MissingData};

    fn step(threshold: f64, comparison: Comparison, adjustment: Adjustment) -> PolicyConfig {
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

    fn tracking(target: f64) -> PolicyConfig {
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

    /// Feeds `cpu` every 15 s from `from` to `to` seconds; returns the decisions with their times.
    fn run(s: &mut Scaler, cap: &mut u32, from: u64, to: u64, cpu: f64) -> Vec<(u64, u32)> {
        let mut out = vec![];
        for t in (from..to).step_by(15) {
            let metric = |name: &str| (name == CPU).then_some(cpu);
            let obs = Observation { now: Duration::from_secs(t), capacity: *cap, ready: *cap, metric: &metric };
            if let Some(d) = s.evaluate(&obs) {
                *cap = d.desired;
                out.push((t, d.desired));
            }
        }
        out
    }

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
    fn a_new_leader_carries_on_from_the_saved_alarm_and_windows() {
        let policies = [step(70.0, Comparison::Greater, Adjustment::Change(2)), tracking(50.0)];
        let mut old = Scaler::new(&policies[..1], Duration::ZERO);
        let mut cap = 2;
        // Three breaching periods: the 4-of-4 alarm is one period short.
        assert_eq!(run(&mut old, &mut cap, 0, 190, 90.0), vec![]);
        let epoch = 1_800_000_000_000;
        let saved = old.export(epoch);
        let text = serde_json::to_string(&saved).unwrap();
        let saved: ScalerSaved = serde_json::from_str(&text).unwrap();
        // The next leader's clock starts 190 s later; one more breaching period is enough.
        let mut new = Scaler::new(&policies[..1], Duration::ZERO);
        new.import(&saved, epoch + 190_000);
        assert_eq!(run(&mut new, &mut cap, 0, 70, 90.0), vec![(60, 4)]);
        // A fresh scaler would need all four periods.
        let mut fresh = Scaler::new(&policies[..1], Duration::ZERO);
        let mut cap2 = 2;
        assert_eq!(run(&mut fresh, &mut cap2, 0, 70, 90.0), vec![]);

        // Target tracking: the scale-in stabilization window carries over too. The old leader
        // saw 50 % (4 needed) for 100 s, then 25 % (2 needed): its window still holds 4.
        let mut old = Scaler::new(&policies[1..], Duration::ZERO);
        let mut cap = 4;
        assert_eq!(run(&mut old, &mut cap, 0, 100, 50.0), vec![]);
        assert_eq!(run(&mut old, &mut cap, 105, 390, 25.0), vec![]);
        let saved = old.export(epoch);
        // The next leader's loop clock began 1,000 s before the old one's.
        let mut new = Scaler::new(&policies[1..], Duration::ZERO);
        new.import(&saved, epoch - 1_000_000);
        let acts = run(&mut new, &mut cap, 1390, 1800, 25.0);
        assert_eq!(acts.first(), Some(&(1405, 2)), "scales in once the 4s leave the window: {acts:?}");
        // A fresh tracker would first watch a whole window of its own.
        let mut fresh = Scaler::new(&policies[1..], Duration::ZERO);
        let mut cap = 4;
        let acts = run(&mut fresh, &mut cap, 1390, 1800, 25.0);
        assert!(acts.first().is_some_and(|a| a.0 >= 1690), "{acts:?}");
        // A policy whose metric changed starts fresh.
        let mut other = Scaler::new(&[tracking(60.0)], Duration::ZERO);
        if let Some(PolicyState::Tracking(t)) = other.policies.first_mut() {
            t.cfg.metric = "memory".into();
        }
        other.import(&saved, epoch);
        assert!(matches!(other.policies.first(), Some(PolicyState::Tracking(t)) if t.history.is_empty()));
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

    #[test]
    fn tracking_scales_out_at_once_and_in_after_stabilization() {
        let mut s = Scaler::new(&[tracking(70.0)], Duration::from_secs(300));
        let mut cap = 4;
        // 4 ready at 100 % → want ceil(4 × 100/70) = 6 immediately.
        assert_eq!(run(&mut s, &mut cap, 0, 15, 100.0), vec![(0, 6)]);
        // Within tolerance: nothing.
        assert_eq!(run(&mut s, &mut cap, 15, 120, 66.0), vec![]);
        // Load falls to 20 %: ceil(6 × 20/70) = 2, but only once 300 s of lower answers passed.
        let acts = run(&mut s, &mut cap, 120, 900, 20.0);
        assert_eq!(acts.first().map(|a| a.0), Some(420), "{acts:?}");
        assert_eq!(acts.first().map(|a| a.1), Some(2));
    }

    #[test]
    fn tracking_blocks_a_step_scale_in() {
        let mut s =
            Scaler::new(&[step(30.0, Comparison::Less, Adjustment::Change(-1)), tracking(25.0)], Duration::ZERO);
        let mut cap = 4;
        // 28 % is below the step threshold but within the tracker's tolerance of 25: hold.
        assert_eq!(run(&mut s, &mut cap, 0, 600, 26.0), vec![]);
    }

    #[test]
    fn predictive_sees_past_saturation() {
        let mut cfg = tracking(70.0);
        if let PolicyConfig::TargetTracking(t) = &mut cfg {
            t.predictive = true;
        }
        let mut s = Scaler::new(&[cfg], Duration::ZERO);
        let cap = 2;
        // Learn: 50 % CPU at 100 requests per target → 200 per target at full.
        for t in (0..120).step_by(15) {
            let metric = |n: &str| match n {
                CPU => Some(50.0),
                REQUESTS_PER_TARGET => Some(100.0),
                _ => None,
            };
            let obs = Observation { now: Duration::from_secs(t), capacity: cap, ready: cap, metric: &metric };
            assert_eq!(s.evaluate(&obs), None);
        }
        // Demand jumps to 1000 per target: CPU pins at 100, but the model knows 2 × 1000 / 200 = 10
        // instances at 100 %, so 15 at 70 % — in one step, where plain tracking would ask for 3.
        let metric = |n: &str| match n {
            CPU => Some(100.0),
            REQUESTS_PER_TARGET => Some(1000.0),
            _ => None,
        };
        let obs = Observation { now: Duration::from_secs(120), capacity: cap, ready: cap, metric: &metric };
        let d = s.evaluate(&obs).map(|d| d.desired);
        assert!(d.is_some_and(|d| d >= 15), "{d:?}");
    }
}

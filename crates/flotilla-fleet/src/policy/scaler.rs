//! The [`Scaler`]: every policy of a group, combined into one decision within the group's bounds,
//! and the state a swarm group's next leader carries on from.

use std::time::Duration;

use flotilla_config::PolicyConfig;
use flotilla_watch::AlarmState;
use serde::{Deserialize, Serialize};

use super::step::StepState;
use super::tracking::TrackingState;
use super::{Decision, Observation, Proposal};

/// All of a group's policies with their state (alarm datapoints, stabilization windows).
pub struct Scaler {
    pub(super) policies: Vec<PolicyState>,
    cooldown: Duration,
    last_step_action: Option<Duration>,
}

pub(super) enum PolicyState {
    Step(StepState),
    Tracking(TrackingState),
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

    /// Evaluates every policy; returns the new desired capacity, within `obs.min..=obs.max`,
    /// when it differs from `obs.capacity`.
    ///
    /// The policies' own state moves as if the combined answer were applied even when the bounds
    /// then hold the group where it is (a step action starts its cooldown, a scale-in counts
    /// toward its cooldown), as it always has: the live group and the simulator used to clamp
    /// after this call, each on its own.
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
        // `max` first, then `min`: bounds the wrong way round (never valid config) cannot panic.
        let desired = proposal.desired.min(obs.max).max(obs.min);
        (desired != obs.capacity).then_some(Decision { desired, cause: proposal.cause })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testkit::{run, run_within, step, tracking};
    use flotilla_config::{Adjustment, Comparison};

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
    fn tracking_blocks_a_step_scale_in() {
        let mut s =
            Scaler::new(&[step(30.0, Comparison::Less, Adjustment::Change(-1)), tracking(25.0)], Duration::ZERO);
        let mut cap = 4;
        // 28 % is below the step threshold but within the tracker's tolerance of 25: hold.
        assert_eq!(run(&mut s, &mut cap, 0, 600, 26.0), vec![]);
    }

    #[test]
    fn decisions_stay_within_the_bounds_and_a_held_step_still_cools_down() {
        // 4 ready at 100 % wants 6, but max is 5.
        let mut s = Scaler::new(&[tracking(70.0)], Duration::ZERO);
        let mut cap = 4;
        assert_eq!(run_within(&mut s, &mut cap, (1, 5), 0, 15, 100.0), vec![(0, 5)]);
        // At max already: no decision at all (not a "change" from 5 to 5).
        assert_eq!(run_within(&mut s, &mut cap, (1, 5), 15, 120, 100.0), vec![]);
        // The floor holds too: 20 % of 5 wants 2, min is 3 (once the 300 s window has passed).
        let acts = run_within(&mut s, &mut cap, (3, 5), 120, 900, 20.0);
        assert_eq!(acts.first().map(|a| a.1), Some(3), "{acts:?}");
        assert!(acts.iter().all(|a| a.1 >= 3), "{acts:?}");

        // A step scale-out the bounds swallow still counts as the step's action: its cooldown
        // runs from then, exactly as when the group clamped after the scaler.
        let mut s = Scaler::new(&[step(70.0, Comparison::Greater, Adjustment::Change(2))], Duration::from_secs(300));
        let mut cap = 4;
        assert_eq!(run_within(&mut s, &mut cap, (1, 4), 0, 300, 90.0), vec![]);
        assert_eq!(s.last_step_action(), Some(Duration::from_secs(240)));
    }
}

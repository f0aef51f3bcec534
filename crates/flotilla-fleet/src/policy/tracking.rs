//! Target tracking: keep a metric at a target by sizing the group in proportion, with a
//! tolerance band, stabilization windows and scale-in limits (as the HPA and ASG target
//! tracking do); with `predictive = true` it sizes from [`super::predictive`]'s demand model.

use std::collections::VecDeque;
use std::time::Duration;

use flotilla_config::TargetTracking;

use super::predictive::DemandModel;
use super::{Observation, Proposal};

/// Proportional sizing: `ceil(ready × value / target)`, within a tolerance, with stabilization
/// windows (the scale-in answer is the highest recommendation of the window, as the HPA does).
pub(super) struct TrackingState {
    pub(super) cfg: TargetTracking,
    pub(super) history: VecDeque<(Duration, u32)>,
    demand: DemandModel,
    pub(super) last_scale_in: Option<Duration>,
    /// When this tracker first had an answer: no scale-in before a full stabilization window
    /// has been seen, so a fresh group is not shrunk on its first quiet seconds.
    pub(super) first: Option<Duration>,
}

impl TrackingState {
    pub(super) fn new(cfg: TargetTracking) -> Self {
        Self { cfg, history: VecDeque::new(), demand: DemandModel::default(), last_scale_in: None, first: None }
    }

    pub(super) fn observe(&mut self, obs: &Observation<'_>) -> Option<Proposal> {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::policy::testkit::{run, tracking};
    use crate::policy::Scaler;

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
}

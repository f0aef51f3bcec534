//! The demand model behind `predictive = true`: sizes a CPU-tracking group for the request
//! rate it sees, which keeps counting when CPU stops at 100 %.

use std::collections::VecDeque;
use std::time::Duration;

use super::{Observation, REQUESTS_PER_TARGET};

/// For `predictive = true` on a CPU target. CPU stops at 100 % when the group is overloaded,
/// which hides how far short it is, so proportional sizing needs several rounds; the request
/// rate keeps counting. The model learns requests-per-instance at 100 % CPU while the group is
/// not saturated, then sizes the group for the demand directly: the recent demand, extrapolated
/// along its trend over the time a new instance takes to be ready, plus a margin of
/// `noise_margin` standard deviations of the recent demand, so a noisy load gets headroom and a
/// steady one does not.
#[derive(Default)]
pub(super) struct DemandModel {
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
    pub(super) fn needed(&mut self, obs: &Observation<'_>, cpu: f64, utilization: f64, sigmas: f64) -> Option<f64> {
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
    use std::time::Duration;

    use flotilla_config::PolicyConfig;

    use crate::policy::testkit::tracking;
    use crate::policy::{Observation, Scaler, CPU, REQUESTS_PER_TARGET};

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
            let obs = Observation {
                now: Duration::from_secs(t),
                capacity: cap,
                min: 0,
                max: 100,
                ready: cap,
                metric: &metric,
            };
            assert_eq!(s.evaluate(&obs), None);
        }
        // Demand jumps to 1000 per target: CPU pins at 100, but the model knows 2 × 1000 / 200 = 10
        // instances at 100 %, so 15 at 70 % — in one step, where plain tracking would ask for 3.
        let metric = |n: &str| match n {
            CPU => Some(100.0),
            REQUESTS_PER_TARGET => Some(1000.0),
            _ => None,
        };
        let obs =
            Observation { now: Duration::from_secs(120), capacity: cap, min: 0, max: 100, ready: cap, metric: &metric };
        let d = s.evaluate(&obs).map(|d| d.desired);
        assert!(d.is_some_and(|d| d >= 15), "{d:?}");
    }
}

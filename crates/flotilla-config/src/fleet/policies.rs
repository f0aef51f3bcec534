//! Raw → typed for `[[groups.NAME.policies]]`: step and target-tracking scaling policies.

use std::time::Duration;

use super::model::*;
use super::raw::RawPolicy;
use super::validate::num;
use crate::ctx::Ctx;
use crate::raw::{Num, S};
use crate::watch::validate::{evaluation, EvaluationRaw};

pub(super) fn policy(cx: &mut Ctx<'_>, group: &str, raw: &S<RawPolicy>) -> Option<PolicyConfig> {
    let r = raw.get_ref();
    let key = |k: &str| format!("groups.{group}.policies.{k}");
    let metric = match &r.metric {
        Some(m) if !m.get_ref().is_empty() => m.get_ref().clone(),
        Some(m) => {
            cx.err(m, format!("{} must not be empty", key("metric")));
            return None;
        }
        None => {
            cx.err(raw, "policy needs metric = \"cpu\" (cpu, requests_per_target, in_flight, memory)");
            return None;
        }
    };
    let kind = r.kind.as_ref().map(|k| (k, k.get_ref().as_str()));
    match kind {
        Some((_, "step")) => {
            let statistic = match r.statistic.as_ref().map(|s| (s, s.get_ref().as_str())) {
                None | Some((_, "avg")) | Some((_, "average")) => Statistic::Avg,
                Some((_, "min")) => Statistic::Min,
                Some((_, "max")) => Statistic::Max,
                Some((_, "sum")) => Statistic::Sum,
                Some((s, other)) => {
                    cx.err(s, format!("{}: unknown statistic {other:?} (avg, min, max, sum)", key("statistic")));
                    Statistic::Avg
                }
            };
            let ev = evaluation(
                cx,
                &key,
                EvaluationRaw {
                    period: &r.period,
                    evaluation_periods: &r.evaluation_periods,
                    datapoints_to_alarm: &r.datapoints_to_alarm,
                    comparison: &r.comparison,
                    missing_data: &r.missing_data,
                },
                100,
            );
            let Some(threshold) = r.threshold.as_ref().map(|t| num(cx, t, &key("threshold"))) else {
                cx.err(raw, "step policy needs threshold = N");
                return None;
            };
            let comparison = ev.comparison.unwrap_or_else(|| {
                cx.err(raw, "step policy needs comparison = \">\" (or >=, <, <=)");
                Comparison::Greater
            });
            let Some(adj) = &r.adjustment else {
                cx.err(raw, "step policy needs adjustment = \"+2\" (+N, -N, +N%, -N%, =N)");
                return None;
            };
            let adjustment = match adjustment(adj.get_ref()) {
                Ok(a) => a,
                Err(e) => {
                    cx.err(adj, format!("{}: {e}", key("adjustment")));
                    return None;
                }
            };
            for (field, present) in [("target", r.target.is_some()), ("tolerance", r.tolerance.is_some())] {
                if present {
                    cx.err(raw, format!("{}: step policies take threshold/comparison, not {field}", key(field)));
                }
            }
            Some(PolicyConfig::Step(StepPolicy {
                metric,
                statistic,
                period: ev.period,
                evaluation_periods: ev.evaluation_periods,
                datapoints_to_alarm: ev.datapoints_to_alarm,
                threshold: threshold?,
                comparison,
                adjustment,
                missing_data: ev.missing_data,
            }))
        }
        Some((_, "target_tracking")) => {
            let Some(target) = r.target.as_ref().and_then(|t| num(cx, t, &key("target"))) else {
                if r.target.is_none() {
                    cx.err(raw, "target_tracking policy needs target = N (e.g. 70 for cpu)");
                }
                return None;
            };
            if target <= 0.0 {
                if let Some(t) = &r.target {
                    cx.err(t, format!("{} must be greater than 0", key("target")));
                }
            }
            let mut fraction = |v: &Option<S<Num>>,
                                k: &str,
                                default: f64,
                                range: std::ops::RangeInclusive<f64>|
             -> f64 {
                let Some(v) = v else { return default };
                match num(cx, v, &key(k)) {
                    Some(x) if range.contains(&x) => x,
                    Some(x) => {
                        cx.err(v, format!("{} must be between {} and {}, got {x}", key(k), range.start(), range.end()));
                        default
                    }
                    None => default,
                }
            };
            let tolerance = fraction(&r.tolerance, "tolerance", 0.1, 0.0..=0.9);
            let max_scale_in_fraction = fraction(&r.max_scale_in_fraction, "max_scale_in_fraction", 1.0, 0.01..=1.0);
            let headroom = fraction(&r.headroom, "headroom", 0.0, 0.0..=5.0);
            let noise_margin = fraction(&r.noise_margin, "noise_margin", 0.5, 0.0..=5.0);
            let scale_in_margin = fraction(&r.scale_in_margin, "scale_in_margin", 0.3, 0.0..=2.0);
            Some(PolicyConfig::TargetTracking(TargetTracking {
                metric,
                target,
                tolerance,
                scale_in_stabilization: cx.duration(
                    &r.scale_in_stabilization,
                    &key("scale_in_stabilization"),
                    Duration::from_secs(300),
                ),
                scale_out_stabilization: cx.duration(
                    &r.scale_out_stabilization,
                    &key("scale_out_stabilization"),
                    Duration::ZERO,
                ),
                scale_in_cooldown: cx.duration(&r.scale_in_cooldown, &key("scale_in_cooldown"), Duration::ZERO),
                disable_scale_in: r.disable_scale_in.unwrap_or(false),
                max_scale_in_fraction,
                headroom,
                predictive: r.predictive.unwrap_or(false),
                noise_margin,
                scale_in_margin,
            }))
        }
        Some((k, other)) => {
            cx.err(k, format!("{}: unknown policy type {other:?} (step, target_tracking)", key("type")));
            None
        }
        None => {
            cx.err(raw, "policy needs type = \"step\" or \"target_tracking\"");
            None
        }
    }
}

/// "+2", "-1", "+50%", "=4", or a bare integer (a change).
fn adjustment(v: &Num) -> Result<Adjustment, String> {
    let text = match v {
        Num::Int(n) => return Ok(Adjustment::Change(*n)),
        Num::Float(_) => return Err("must be a whole number like \"+2\"".into()),
        Num::Text(t) => t.trim(),
    };
    let bad = || format!("{text:?} must look like +N, -N, +N%, -N% or =N");
    if let Some(n) = text.strip_prefix('=') {
        return n.trim().parse::<u32>().map(Adjustment::Exact).map_err(|_| bad());
    }
    let (body, percent) = match text.strip_suffix('%') {
        Some(b) => (b, true),
        None => (text, false),
    };
    if !body.starts_with(['+', '-']) {
        return Err(bad());
    }
    let n: i64 = body.parse().map_err(|_| bad())?;
    if n == 0 {
        return Err(format!("{text:?} changes nothing"));
    }
    Ok(if percent { Adjustment::Percent(n) } else { Adjustment::Change(n) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adjustments() {
        assert_eq!(adjustment(&Num::Text("+2".into())), Ok(Adjustment::Change(2)));
        assert_eq!(adjustment(&Num::Text("-1".into())), Ok(Adjustment::Change(-1)));
        assert_eq!(adjustment(&Num::Text("+50%".into())), Ok(Adjustment::Percent(50)));
        assert_eq!(adjustment(&Num::Text("=4".into())), Ok(Adjustment::Exact(4)));
        assert_eq!(adjustment(&Num::Int(-3)), Ok(Adjustment::Change(-3)));
        assert!(adjustment(&Num::Text("2".into())).is_err());
        assert!(adjustment(&Num::Text("+0".into())).is_err());
        assert_eq!(Adjustment::Percent(50).apply(3), 5);
        assert_eq!(Adjustment::Percent(-25).apply(2), 1);
        assert_eq!(Adjustment::Change(-5).apply(2), 0);
    }
}

//! Raw → typed for `[watch]`, `[[alarms]]`, `[notifiers.*]`, `[[slos]]` and `[budget]`.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use super::model::*;
use super::raw::{RawAccountBudget, RawAlarm, RawSlo, RawWatch};
pub(crate) use super::validate_notifier::notifiers;
use crate::ctx::Ctx;
use crate::raw::{Num, S};
use crate::{Comparison, MissingData, TargetGroupConfig};

pub(crate) fn watch(cx: &mut Ctx<'_>, raw: Option<&S<RawWatch>>) -> WatchConfig {
    let d = WatchConfig::default();
    let Some(raw) = raw else { return d };
    let r = raw.get_ref();
    let resolution = cx.duration(&r.resolution, "watch.resolution", d.resolution);
    if resolution < Duration::from_millis(100) {
        if let Some(v) = &r.resolution {
            cx.err(v, "watch.resolution must be at least 100ms");
        }
    }
    let retention = cx.duration(&r.retention, "watch.retention", d.retention);
    if retention < resolution * 2 {
        if let Some(v) = &r.retention {
            cx.err(v, "watch.retention must hold at least two datapoints (2 × resolution)");
        }
    }
    // Every series keeps every datapoint of the window: bound what one series may cost.
    let per_series = retention.as_millis() / resolution.as_millis().max(1);
    if per_series > u128::from(MAX_DATAPOINTS_PER_SERIES) {
        if let Some(v) = r.retention.as_ref().or(r.resolution.as_ref()) {
            cx.err(
                v,
                format!(
                    "watch.retention / watch.resolution is {per_series} datapoints per series; at most \
                     {MAX_DATAPOINTS_PER_SERIES} (a longer resolution or a shorter retention)"
                ),
            );
        }
    }
    let data_dir = r.data_dir.as_ref().map(|d| cx.base_dir.join(d.get_ref()));
    WatchConfig { retention, resolution, data_dir }
}

/// What alarms and step policies share, parsed one way: the period, M of N, the comparison
/// (None when absent: callers choose a default or an error) and the missing-data treatment.
pub(crate) struct Evaluation {
    pub period: Duration,
    pub evaluation_periods: u32,
    pub datapoints_to_alarm: u32,
    pub comparison: Option<Comparison>,
    pub missing_data: MissingData,
}

pub(crate) struct EvaluationRaw<'a> {
    pub period: &'a Option<S<String>>,
    pub evaluation_periods: &'a Option<S<i64>>,
    pub datapoints_to_alarm: &'a Option<S<i64>>,
    pub comparison: &'a Option<S<String>>,
    pub missing_data: &'a Option<S<String>>,
}

pub(crate) fn evaluation(
    cx: &mut Ctx<'_>,
    key: &dyn Fn(&str) -> String,
    r: EvaluationRaw<'_>,
    max_periods: i64,
) -> Evaluation {
    let period = cx.duration(r.period, &key("period"), Duration::from_secs(60));
    if period.is_zero() {
        if let Some(p) = r.period {
            cx.err(p, format!("{} must be greater than 0", key("period")));
        }
    }
    let evaluation_periods = cx.int(r.evaluation_periods, &key("evaluation_periods"), 1..=max_periods, 1) as u32;
    let datapoints_to_alarm =
        cx.int(r.datapoints_to_alarm, &key("datapoints_to_alarm"), 1..=max_periods, evaluation_periods as i64) as u32;
    if datapoints_to_alarm > evaluation_periods {
        if let Some(d) = r.datapoints_to_alarm {
            cx.err(
                d,
                format!(
                    "{} ({datapoints_to_alarm}) cannot exceed evaluation_periods ({evaluation_periods})",
                    key("datapoints_to_alarm")
                ),
            );
        }
    }
    let comparison = r.comparison.as_ref().map(|c| match c.get_ref().as_str() {
        ">" => Comparison::Greater,
        ">=" => Comparison::GreaterOrEqual,
        "<" => Comparison::Less,
        "<=" => Comparison::LessOrEqual,
        other => {
            cx.err(c, format!("{}: {other:?} must be one of >, >=, <, <=", key("comparison")));
            Comparison::Greater
        }
    });
    let missing_data = match r.missing_data.as_ref().map(|m| (m, m.get_ref().as_str())) {
        None | Some((_, "missing")) => MissingData::Missing,
        Some((_, "ignore")) => MissingData::Ignore,
        Some((_, "breaching")) => MissingData::Breaching,
        Some((_, "not_breaching")) => MissingData::NotBreaching,
        Some((m, other)) => {
            cx.err(
                m,
                format!("{}: {other:?} must be missing, ignore, breaching or not_breaching", key("missing_data")),
            );
            MissingData::Missing
        }
    };
    Evaluation { period, evaluation_periods, datapoints_to_alarm, comparison, missing_data }
}

pub(crate) fn slos(
    cx: &mut Ctx<'_>,
    raw: &[S<RawSlo>],
    notifiers: &BTreeMap<String, NotifierConfig>,
    groups: &BTreeMap<String, TargetGroupConfig>,
    has_cluster: bool,
) -> Vec<SloConfig> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for s in raw {
        let r = s.get_ref();
        let Some(name) = &r.name else {
            cx.err(s, "slo needs name = \"...\"");
            continue;
        };
        let key = |k: &str| format!("slos.{}.{k}", name.get_ref());
        if !seen.insert(name.get_ref().clone()) {
            cx.err(name, format!("slo {:?} is defined twice", name.get_ref()));
        }
        let Some(tg) = &r.target_group else {
            cx.err(s, format!("{} is required", key("target_group")));
            continue;
        };
        if !groups.contains_key(tg.get_ref()) {
            let known: Vec<_> = groups.keys().map(String::as_str).collect();
            cx.err(
                tg,
                format!("{} {:?} is not defined (known: {})", key("target_group"), tg.get_ref(), known.join(", ")),
            );
        }
        let objective = match r.objective.as_ref().map(|o| (o, o.get_ref())) {
            None => {
                cx.err(s, format!("{} is required, e.g. \"99.9%\"", key("objective")));
                continue;
            }
            Some((o, v)) => {
                let parsed = match v {
                    Num::Text(t) => {
                        t.trim().strip_suffix('%').and_then(|p| p.trim().parse::<f64>().ok()).map(|p| p / 100.0)
                    }
                    Num::Float(f) if *f > 1.0 => Some(f / 100.0),
                    Num::Float(f) => Some(*f),
                    Num::Int(i) => Some(*i as f64 / 100.0),
                };
                match parsed {
                    Some(x) if x > 0.0 && x < 1.0 => x,
                    _ => {
                        cx.err(o, format!("{} must be a percentage below 100, e.g. \"99.9%\"", key("objective")));
                        continue;
                    }
                }
            }
        };
        let kind = match (r.kind.as_ref().map(|k| (k, k.get_ref().as_str())), &r.latency) {
            (Some((_, "availability")), None) => SloKind::Availability,
            (Some((k, "availability")), Some(_)) => {
                cx.err(k, format!("{}: an availability SLO takes no latency", key("kind")));
                SloKind::Availability
            }
            (None | Some((_, "latency")), Some(l)) => {
                SloKind::Latency(cx.duration(&Some(l.clone()), &key("latency"), Duration::from_millis(200)))
            }
            (None | Some((_, "latency")), None) => {
                cx.err(s, format!("{} needs latency = \"200ms\" (or kind = \"availability\")", key("latency")));
                SloKind::Availability
            }
            (Some((k, other)), _) => {
                cx.err(k, format!("{}: {other:?} must be \"latency\" or \"availability\"", key("kind")));
                SloKind::Availability
            }
        };
        let window = cx.duration(&r.window, &key("window"), Duration::from_secs(30 * 86_400));
        let cluster = scope(cx, &r.scope, &key("scope"), has_cluster);
        let notify = r
            .notify
            .iter()
            .map(|n| {
                if !notifiers.contains_key(n.get_ref()) {
                    cx.err(n, format!("{}: {:?} is not a [notifiers] entry", key("notify"), n.get_ref()));
                }
                n.get_ref().clone()
            })
            .collect();
        out.push(SloConfig {
            cluster,
            name: name.get_ref().clone(),
            target_group: tg.get_ref().clone(),
            objective,
            kind,
            window,
            notify,
        });
    }
    out
}

pub(crate) fn budget(
    cx: &mut Ctx<'_>,
    raw: &S<RawAccountBudget>,
    notifiers: &BTreeMap<String, NotifierConfig>,
    groups: &BTreeMap<String, crate::GroupConfig>,
) -> Option<AccountBudgetConfig> {
    let r = raw.get_ref();
    let number = |v: &Num| match v {
        Num::Int(i) => Some(*i as f64),
        Num::Float(f) if f.is_finite() => Some(*f),
        _ => None,
    };
    let monthly = match r.monthly.as_ref().map(|m| (m, number(m.get_ref()))) {
        Some((_, Some(m))) if m > 0.0 => m,
        Some((m, _)) => {
            cx.err(m, "budget.monthly must be a number greater than 0");
            return None;
        }
        None => {
            cx.err(raw, "budget.monthly is required (the month's budget in budget.currency)");
            return None;
        }
    };
    let mut instance_hour = BTreeMap::new();
    for (g, price) in &r.instance_hour {
        if !groups.contains_key(g.get_ref()) {
            let known: Vec<_> = groups.keys().map(String::as_str).collect();
            cx.err(
                g,
                format!(
                    "budget.instance_hour: {:?} is not a [groups] entry (known: {})",
                    g.get_ref(),
                    known.join(", ")
                ),
            );
        }
        match number(price.get_ref()) {
            Some(p) if p >= 0.0 => {
                instance_hour.insert(g.get_ref().clone(), p);
            }
            _ => cx.err(price, format!("budget.instance_hour.{}: must be a price of 0 or more", g.get_ref())),
        }
    }
    let mut alerts: Vec<f64> = match &r.alerts {
        None => vec![0.5, 0.8, 1.0],
        Some(list) => list
            .iter()
            .filter_map(|a| match number(a.get_ref()) {
                // 0.8 and 80 both mean 80 %.
                Some(x) if x > 0.0 && x <= 10.0 => Some(x),
                Some(x) if x > 10.0 && x <= 1000.0 => Some(x / 100.0),
                _ => {
                    cx.err(a, "budget.alerts: each is a fraction (0.8) or a percentage (80) of the budget");
                    None
                }
            })
            .collect(),
    };
    alerts.sort_by(f64::total_cmp);
    alerts.dedup();
    let notify = r
        .notify
        .iter()
        .map(|n| {
            if !notifiers.contains_key(n.get_ref()) {
                cx.err(n, format!("budget.notify: {:?} is not a [notifiers] entry", n.get_ref()));
            }
            n.get_ref().clone()
        })
        .collect();
    Some(AccountBudgetConfig {
        currency: r.currency.as_ref().map_or("USD".into(), |c| c.get_ref().clone()),
        monthly,
        instance_hour,
        alerts,
        notify,
        hard_cap: r.hard_cap.unwrap_or(false),
    })
}

/// `scope = "node" | "cluster"` (SLOs, alarms); "cluster" needs `[cluster]`.
fn scope(cx: &mut Ctx<'_>, raw: &Option<S<String>>, key: &str, has_cluster: bool) -> bool {
    match raw.as_ref().map(|sc| (sc, sc.get_ref().as_str())) {
        None | Some((_, "node")) => false,
        Some((_, "cluster")) if has_cluster => true,
        Some((sc, "cluster")) => {
            cx.err(sc, format!("{key}: \"cluster\" needs a [cluster] table (nodes sharing Redis)"));
            false
        }
        Some((sc, other)) => {
            cx.err(sc, format!("{key}: {other:?} must be \"node\" or \"cluster\""));
            false
        }
    }
}

pub(crate) fn alarms(
    cx: &mut Ctx<'_>,
    raw: &[S<RawAlarm>],
    notifiers: &BTreeMap<String, NotifierConfig>,
    has_cluster: bool,
) -> Vec<AlarmConfig> {
    let mut seen = HashSet::new();
    raw.iter().filter_map(|a| alarm(cx, a, notifiers, &mut seen, has_cluster)).collect()
}

fn alarm(
    cx: &mut Ctx<'_>,
    raw: &S<RawAlarm>,
    notifiers: &BTreeMap<String, NotifierConfig>,
    seen: &mut HashSet<String>,
    has_cluster: bool,
) -> Option<AlarmConfig> {
    let r = raw.get_ref();
    let Some(name) = &r.name else {
        cx.err(raw, "alarm needs name = \"...\"");
        return None;
    };
    let key = |k: &str| format!("alarms.{}.{k}", name.get_ref());
    if !seen.insert(name.get_ref().clone()) {
        cx.err(name, format!("alarm {:?} is defined twice", name.get_ref()));
    }
    let Some(metric) = &r.metric else {
        cx.err(raw, format!("{} is required, e.g. \"http_requests_5xx_rate\"", key("metric")));
        return None;
    };
    let statistic = match r.statistic.as_ref().map(|s| (s, s.get_ref().as_str())) {
        None | Some((_, "avg")) | Some((_, "average")) => AlarmStatistic::Avg,
        Some((_, "sum")) => AlarmStatistic::Sum,
        Some((_, "min")) => AlarmStatistic::Min,
        Some((_, "max")) => AlarmStatistic::Max,
        Some((_, "count")) => AlarmStatistic::Count,
        Some((_, "p50")) => AlarmStatistic::Percentile(50.0),
        Some((_, "p95")) => AlarmStatistic::Percentile(95.0),
        Some((_, "p99")) => AlarmStatistic::Percentile(99.0),
        Some((s, other)) => {
            cx.err(
                s,
                format!("{}: unknown statistic {other:?} (avg, sum, min, max, count, p50, p95, p99)", key("statistic")),
            );
            AlarmStatistic::Avg
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
        1000,
    );
    let threshold = match &r.threshold {
        Some(t) => match t.get_ref() {
            Num::Int(i) => *i as f64,
            Num::Float(f) if f.is_finite() => *f,
            _ => {
                cx.err(t, format!("{} must be a number", key("threshold")));
                0.0
            }
        },
        None => {
            cx.err(raw, format!("{} is required", key("threshold")));
            0.0
        }
    };
    let notify = r
        .notify
        .iter()
        .map(|n| {
            if !notifiers.contains_key(n.get_ref()) {
                let known: Vec<_> = notifiers.keys().map(String::as_str).collect();
                cx.err(
                    n,
                    format!(
                        "{}: {:?} is not a [notifiers] entry (known: {})",
                        key("notify"),
                        n.get_ref(),
                        known.join(", ")
                    ),
                );
            }
            n.get_ref().clone()
        })
        .collect();
    Some(AlarmConfig {
        name: name.get_ref().clone(),
        metric: metric.get_ref().clone(),
        labels: r.labels.clone(),
        statistic,
        period: ev.period,
        evaluation_periods: ev.evaluation_periods,
        datapoints_to_alarm: ev.datapoints_to_alarm,
        threshold,
        comparison: ev.comparison.unwrap_or(Comparison::Greater),
        missing_data: ev.missing_data,
        notify,
        cluster: scope(cx, &r.scope, &key("scope"), has_cluster),
    })
}

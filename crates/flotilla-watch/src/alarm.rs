//! Alarms with CloudWatch semantics: one datapoint per period (a statistic over the period's
//! samples), the last `evaluation_periods` of them judged, `datapoints_to_alarm` breaching ones
//! put the alarm in ALARM, and missing datapoints treated as configured.

use std::collections::VecDeque;

use flotilla_config::{AlarmConfig, AlarmStatistic, MissingData};
use serde::Serialize;

use crate::store::Point;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub enum AlarmState {
    #[serde(rename = "OK")]
    Ok,
    #[serde(rename = "ALARM")]
    Alarm,
    #[serde(rename = "INSUFFICIENT_DATA")]
    InsufficientData,
}

#[derive(Debug, Clone, Serialize)]
pub struct Transition {
    pub time: String,
    pub from: AlarmState,
    pub to: AlarmState,
    pub reason: String,
}

/// The series an alarm reads: a cluster-scoped alarm on the edge's HTTP metrics (`http_*`
/// aliases, `flotilla_http_*`) reads the cluster's totals (`cluster_http_*`,
/// `flotilla_cluster_http_*`, fed by the binary from every node's counts); other metrics are
/// this node's (only the notification is the cluster's).
pub fn series_of(cfg: &AlarmConfig) -> std::borrow::Cow<'_, str> {
    let m = cfg.metric.as_str();
    if !cfg.cluster {
        return m.into();
    }
    if let Some(rest) = m.strip_prefix("flotilla_http_") {
        format!("flotilla_cluster_http_{rest}").into()
    } else if m.starts_with("http_requests_") || m.starts_with("http_latency_") {
        format!("cluster_{m}").into()
    } else {
        m.into()
    }
}

/// Transitions kept per alarm.
const HISTORY: usize = 100;

pub struct Alarm {
    pub cfg: AlarmConfig,
    pub state: AlarmState,
    /// Datapoints of the last evaluation periods, oldest first (None = no data in that period).
    pub datapoints: VecDeque<Option<f64>>,
    pub history: VecDeque<Transition>,
    /// End (epoch seconds) of the last period evaluated.
    pub evaluated_until: Option<f64>,
}

impl Alarm {
    pub fn new(cfg: AlarmConfig) -> Self {
        Self {
            cfg,
            state: AlarmState::InsufficientData,
            datapoints: VecDeque::new(),
            history: VecDeque::new(),
            evaluated_until: None,
        }
    }

    /// The statistic of the points that fall in one period, or None.
    pub fn datapoint(&self, points: &[Point]) -> Option<f64> {
        statistic(self.cfg.statistic, points)
    }

    /// Adds the datapoint of a period that just ended and evaluates. Returns the transition if
    /// the state changed.
    pub fn observe(&mut self, datapoint: Option<f64>, now: String) -> Option<Transition> {
        let n = self.cfg.evaluation_periods as usize;
        if self.datapoints.len() == n {
            self.datapoints.pop_front();
        }
        self.datapoints.push_back(datapoint);
        let (next, reason) = self.evaluate();
        if next == self.state {
            return None;
        }
        let t = Transition { time: now, from: self.state, to: next, reason };
        self.state = next;
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(t.clone());
        Some(t)
    }

    fn evaluate(&self) -> (AlarmState, String) {
        let c = &self.cfg;
        let n = c.evaluation_periods as usize;
        // Periods not observed yet count as missing.
        let missing_slots = n.saturating_sub(self.datapoints.len());
        let present: Vec<f64> = self.datapoints.iter().flatten().copied().collect();
        let missing = missing_slots + self.datapoints.iter().filter(|d| d.is_none()).count();
        let mut breaching = present.iter().filter(|v| c.comparison.holds(**v, c.threshold)).count();
        match c.missing_data {
            MissingData::Breaching => breaching += missing,
            MissingData::NotBreaching => {}
            MissingData::Missing if present.is_empty() => {
                return (AlarmState::InsufficientData, format!("no datapoints in the last {n} periods"));
            }
            // `ignore`: a period without data changes nothing; the state waits for data.
            MissingData::Ignore if self.datapoints.back().is_none_or(Option::is_none) => {
                return (self.state, "no datapoint; state kept (missing_data = ignore)".into());
            }
            MissingData::Missing | MissingData::Ignore => {}
        }
        let shown: Vec<String> =
            self.datapoints.iter().map(|d| d.map_or("-".to_string(), |v| format!("{v:.3}"))).collect();
        let cmp = match c.comparison {
            flotilla_config::Comparison::Greater => ">",
            flotilla_config::Comparison::GreaterOrEqual => ">=",
            flotilla_config::Comparison::Less => "<",
            flotilla_config::Comparison::LessOrEqual => "<=",
        };
        let reason = format!(
            "{breaching} of the last {n} datapoints [{}] {cmp} {} (needs {})",
            shown.join(", "),
            c.threshold,
            c.datapoints_to_alarm
        );
        if breaching >= c.datapoints_to_alarm as usize {
            (AlarmState::Alarm, reason)
        } else {
            (AlarmState::Ok, reason)
        }
    }
}

pub fn statistic(stat: AlarmStatistic, points: &[Point]) -> Option<f64> {
    if points.is_empty() {
        return None;
    }
    let vals = points.iter().map(|p| p.v);
    Some(match stat {
        AlarmStatistic::Avg => vals.sum::<f64>() / points.len() as f64,
        AlarmStatistic::Sum => vals.sum(),
        AlarmStatistic::Min => vals.fold(f64::INFINITY, f64::min),
        AlarmStatistic::Max => vals.fold(f64::NEG_INFINITY, f64::max),
        AlarmStatistic::Count => points.len() as f64,
        AlarmStatistic::Percentile(p) => {
            let mut v: Vec<f64> = vals.collect();
            v.sort_by(f64::total_cmp);
            let idx = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
            v[idx.min(v.len() - 1)]
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_config::Comparison;
    use std::time::Duration;

    fn alarm(missing: MissingData) -> Alarm {
        Alarm::new(AlarmConfig {
            name: "a".into(),
            metric: "m".into(),
            labels: Default::default(),
            statistic: AlarmStatistic::Sum,
            period: Duration::from_secs(60),
            evaluation_periods: 5,
            datapoints_to_alarm: 3,
            threshold: 1.0,
            comparison: Comparison::Greater,
            missing_data: missing,
            notify: vec![],
            cluster: false,
        })
    }

    fn feed(a: &mut Alarm, dps: &[Option<f64>]) -> Vec<AlarmState> {
        dps.iter().filter_map(|d| a.observe(*d, "t".into()).map(|t| t.to)).collect()
    }

    #[test]
    fn three_of_five() {
        let mut a = alarm(MissingData::NotBreaching);
        // Not breaching missing data: OK at once, ALARM once three of five breach.
        assert_eq!(feed(&mut a, &[Some(0.0), Some(5.0), Some(5.0)]), vec![AlarmState::Ok]);
        assert_eq!(feed(&mut a, &[Some(5.0)]), vec![AlarmState::Alarm]);
        assert_eq!(feed(&mut a, &[None, None]), vec![]);
        assert_eq!(feed(&mut a, &[None]), vec![AlarmState::Ok], "{:?}", a.datapoints);
    }

    #[test]
    fn missing_data_treatments() {
        let mut a = alarm(MissingData::Missing);
        assert_eq!(feed(&mut a, &[None, None]), vec![], "starts and stays INSUFFICIENT_DATA");
        assert_eq!(a.state, AlarmState::InsufficientData);
        assert_eq!(feed(&mut a, &[Some(0.0)]), vec![AlarmState::Ok]);
        assert_eq!(feed(&mut a, &[None, None, None, None, None]), vec![AlarmState::InsufficientData]);

        let mut a = alarm(MissingData::Breaching);
        assert_eq!(feed(&mut a, &[None]), vec![AlarmState::Alarm]);

        let mut a = alarm(MissingData::Ignore);
        assert_eq!(feed(&mut a, &[Some(9.0), Some(9.0), Some(9.0)]), vec![AlarmState::Ok, AlarmState::Alarm]);
        assert_eq!(feed(&mut a, &[None, None, None, None, None]), vec![], "ignore keeps ALARM");
        assert_eq!(a.history.len(), 2);
    }

    #[test]
    fn statistics() {
        let pts: Vec<Point> = [1.0, 2.0, 3.0, 10.0].iter().map(|v| Point { t: 0.0, v: *v }).collect();
        assert_eq!(statistic(AlarmStatistic::Avg, &pts), Some(4.0));
        assert_eq!(statistic(AlarmStatistic::Max, &pts), Some(10.0));
        assert_eq!(statistic(AlarmStatistic::Count, &pts), Some(4.0));
        assert_eq!(statistic(AlarmStatistic::Percentile(50.0), &pts), Some(3.0));
        assert_eq!(statistic(AlarmStatistic::Sum, &[]), None);
    }
}

//! The typed `[watch]`, `[[alarms]]`, `[notifiers.*]`, `[[slos]]` and `[budget]` config: the
//! in-process metrics store, CloudWatch-style alarms, where their state changes go, service
//! level objectives and the account's budget.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::{Comparison, MissingData};

/// Datapoints one series may keep (`retention / resolution`): the default retention (14 days)
/// at the finest resolution (100 ms). The store holds each in about 0.5 to 8 bytes.
pub const MAX_DATAPOINTS_PER_SERIES: u64 = 12_096_000;

#[derive(Debug, Clone, PartialEq)]
pub struct WatchConfig {
    /// How long datapoints are kept.
    pub retention: Duration,
    /// Time between samples of every metric (one datapoint per series per step).
    pub resolution: Duration,
    pub data_dir: Option<PathBuf>,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self { retention: Duration::from_secs(14 * 86_400), resolution: Duration::from_secs(10), data_dir: None }
    }
}

/// Statistic of an alarm over the samples in one period.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AlarmStatistic {
    Avg,
    Sum,
    Min,
    Max,
    Count,
    /// A percentile (50, 95, 99) of the samples.
    Percentile(f64),
}

#[derive(Debug, Clone, PartialEq)]
pub struct AlarmConfig {
    pub name: String,
    pub metric: String,
    /// Only series with these labels (others summed over).
    pub labels: BTreeMap<String, String>,
    pub statistic: AlarmStatistic,
    pub period: Duration,
    pub evaluation_periods: u32,
    pub datapoints_to_alarm: u32,
    pub threshold: f64,
    pub comparison: Comparison,
    pub missing_data: MissingData,
    pub notify: Vec<String>,
    /// `scope = "cluster"`: `flotilla_http_*` metrics read the cluster's totals
    /// (`flotilla_cluster_http_*`), and only the node leading the cluster's watch notifies, so a
    /// cluster of N nodes sends one notification, not N.
    pub cluster: bool,
}

pub use super::notifier::{shown_url, NotifierConfig, NotifierFormat, Severity, TrustedCa};

/// What makes a request good for an SLO.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SloKind {
    /// Not 5xx.
    Availability,
    /// Not 5xx and answered within this (rounded down to a bound of the edge's latency
    /// histogram).
    Latency(Duration),
}

/// A service level objective over one target group's requests, with multi-window,
/// multi-burn-rate alerts (the SRE workbook's scheme).
#[derive(Debug, Clone, PartialEq)]
pub struct SloConfig {
    pub name: String,
    pub target_group: String,
    /// Fraction of good requests, e.g. 0.999.
    pub objective: f64,
    pub kind: SloKind,
    pub window: Duration,
    pub notify: Vec<String>,
    /// `scope = "cluster"`: judged on every node's requests (merged through Redis), not this
    /// node's alone. Needs `[cluster]`.
    pub cluster: bool,
}

/// `[budget]`: a monthly budget for all groups' instance-hours (AWS Budgets), with alerts on
/// actual and forecast spend and, with `hard_cap`, no scale-out once it is spent.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountBudgetConfig {
    pub currency: String,
    pub monthly: f64,
    /// Price per instance-hour by group name.
    pub instance_hour: BTreeMap<String, f64>,
    /// Fractions of `monthly` (0.5 = 50 %) that alert, for actual and for forecast spend.
    pub alerts: Vec<f64>,
    pub notify: Vec<String>,
    pub hard_cap: bool,
}

//! `[watch]`, `[[alarms]]`, `[notifiers.*]`, `[[slos]]` and `[budget]` as written (see `crate::raw`).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::raw::{Num, S};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAccountBudget {
    pub currency: Option<S<String>>,
    pub monthly: Option<S<Num>>,
    #[serde(default)]
    pub instance_hour: BTreeMap<S<String>, S<Num>>,
    pub alerts: Option<Vec<S<Num>>>,
    #[serde(default)]
    pub notify: Vec<S<String>>,
    pub hard_cap: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSlo {
    pub name: Option<S<String>>,
    pub target_group: Option<S<String>>,
    pub objective: Option<S<Num>>,
    pub latency: Option<S<String>>,
    pub kind: Option<S<String>>,
    pub window: Option<S<String>>,
    #[serde(default)]
    pub notify: Vec<S<String>>,
    pub scope: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWatch {
    pub retention: Option<S<String>>,
    pub resolution: Option<S<String>>,
    pub data_dir: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAlarm {
    pub name: Option<S<String>>,
    pub metric: Option<S<String>>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub statistic: Option<S<String>>,
    pub period: Option<S<String>>,
    pub evaluation_periods: Option<S<i64>>,
    pub datapoints_to_alarm: Option<S<i64>>,
    pub threshold: Option<S<Num>>,
    pub comparison: Option<S<String>>,
    pub missing_data: Option<S<String>>,
    #[serde(default)]
    pub notify: Vec<S<String>>,
    pub scope: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNotifier {
    pub webhook: Option<S<String>>,
    pub format: Option<S<String>>,
    pub ca: Option<S<String>>,
    pub routing_key: Option<S<String>>,
    pub severity: Option<S<String>>,
    pub timeout: Option<S<String>>,
    pub attempts: Option<S<i64>>,
}

//! `[fleet]` and `[groups.*]` as written (see `crate::raw`).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::raw::{Num, SizeLit, S};

/// `[fleet]`: settings of the fleet as a whole.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFleet {
    pub deployment: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGroup {
    pub target_group: Option<S<String>>,
    pub min: Option<S<i64>>,
    pub max: Option<S<i64>>,
    pub desired: Option<S<i64>>,
    pub health_check_grace: Option<S<String>>,
    pub instance_warmup: Option<S<String>>,
    pub cooldown: Option<S<String>>,
    pub termination_policy: Option<Vec<S<String>>>,
    #[serde(default)]
    pub zones: Vec<S<String>>,
    pub launch: Option<S<RawLaunch>>,
    /// None = the recommended default policy; `[]` = no scaling policy.
    pub policies: Option<Vec<S<RawPolicy>>>,
    #[serde(default)]
    pub schedules: Vec<S<RawSchedule>>,
    pub metrics_interval: Option<S<String>>,
    pub stop_timeout: Option<S<String>>,
    pub budget: Option<S<RawBudget>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBudget {
    pub price_per_instance_hour: Option<S<Num>>,
    pub monthly: Option<S<Num>>,
    pub alerts: Option<Vec<S<i64>>>,
    pub hard_cap: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLaunch {
    pub driver: Option<S<String>>,
    pub command: Option<S<Vec<String>>>,
    #[serde(default)]
    pub env: BTreeMap<String, S<String>>,
    pub workdir: Option<S<String>>,
    pub image: Option<S<String>>,
    pub port: Option<S<i64>>,
    pub cpus: Option<S<Num>>,
    pub memory: Option<S<SizeLit>>,
    pub constraints: Option<S<Vec<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPolicy {
    #[serde(rename = "type")]
    pub kind: Option<S<String>>,
    pub metric: Option<S<String>>,
    pub statistic: Option<S<String>>,
    pub period: Option<S<String>>,
    pub evaluation_periods: Option<S<i64>>,
    pub datapoints_to_alarm: Option<S<i64>>,
    pub threshold: Option<S<Num>>,
    pub comparison: Option<S<String>>,
    pub adjustment: Option<S<Num>>,
    pub missing_data: Option<S<String>>,
    pub target: Option<S<Num>>,
    pub tolerance: Option<S<Num>>,
    pub scale_in_stabilization: Option<S<String>>,
    pub scale_out_stabilization: Option<S<String>>,
    pub scale_in_cooldown: Option<S<String>>,
    pub disable_scale_in: Option<bool>,
    pub max_scale_in_fraction: Option<S<Num>>,
    pub headroom: Option<S<Num>>,
    pub predictive: Option<bool>,
    pub noise_margin: Option<S<Num>>,
    pub scale_in_margin: Option<S<Num>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSchedule {
    pub cron: Option<S<String>>,
    pub timezone: Option<S<String>>,
    pub min: Option<S<i64>>,
    pub max: Option<S<i64>>,
    pub desired: Option<S<i64>>,
}

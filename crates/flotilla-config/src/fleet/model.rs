//! The typed `[fleet]` and `[groups.*]` config: auto scaling groups of app instances and their
//! policies. Only the fleet (and `flotilla simulate`) reads it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// `[fleet]`: what the fleet as a whole needs.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetSettings {
    /// Scopes this Flotilla's Docker containers and Swarm services (their names and the
    /// `flotilla.deployment` label), so another Flotilla on the same host or swarm never
    /// removes or adopts them. Stable across restarts; the same on every node of a cluster.
    pub deployment: String,
    /// True when the config names it; false when derived (see `validate::settings`).
    pub deployment_configured: bool,
}

/// One `[groups.NAME]`: instances kept between `min` and `max`, registered into `target_group`.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupConfig {
    pub name: String,
    pub target_group: String,
    pub min: u32,
    pub max: u32,
    /// The starting desired capacity (clamped to `[min, max]`).
    pub desired: u32,
    /// An instance that fails health checks during this time after launch is not replaced.
    pub health_check_grace: Duration,
    /// A new instance's metrics do not count towards policies until this has passed.
    pub instance_warmup: Duration,
    /// After a scaling action, step policies wait this long before acting again.
    pub cooldown: Duration,
    pub termination_policy: Vec<TerminationPolicy>,
    pub zones: Vec<String>,
    pub launch: LaunchConfig,
    pub policies: Vec<PolicyConfig>,
    /// How often the group samples metrics and evaluates policies (AWS: 60 s; HPA: 15 s).
    pub metrics_interval: Duration,
    /// Time between SIGTERM and SIGKILL when an instance stops.
    pub stop_timeout: Duration,
    pub budget: Option<BudgetConfig>,
    pub schedules: Vec<ScheduleConfig>,
}

/// A scheduled action: at each time `cron` matches in `timezone`, set whichever of min, max and
/// desired it names (like an ASG scheduled action with a recurrence).
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleConfig {
    pub cron: crate::cron::Cron,
    /// The expression as written (for logs and the activity history).
    pub cron_text: String,
    /// An IANA time zone name; "UTC" by default.
    pub timezone: String,
    pub min: Option<u32>,
    pub max: Option<u32>,
    pub desired: Option<u32>,
}

/// A monthly budget for the group's instance-hours (AWS Budgets for one ASG): alerts at
/// percentages of the budget and, with `hard_cap`, no scale-out once it is spent.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetConfig {
    pub price_per_instance_hour: f64,
    pub monthly: f64,
    /// Percentages of `monthly` that raise an alert when actual spend crosses them.
    pub alerts: Vec<u32>,
    pub hard_cap: bool,
}

/// Which instance goes first on scale-in; the first rule that separates candidates decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TerminationPolicy {
    /// Pick from the zone with the most instances.
    ZoneBalance,
    /// Prefer instances launched from an older launch template version.
    OldestLaunchTemplate,
    OldestInstance,
    NewestInstance,
}

/// The launch template: how to start one instance. Any change makes a new version.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchConfig {
    pub driver: LaunchDriver,
    /// Extra environment; values may use the same `{port}`/`{instance}` placeholders as the command.
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum LaunchDriver {
    /// A local child process. `{port}`, `{instance}`, `{group}` and `{zone}` are substituted in
    /// every argument; a leading `flotilla` means this very binary.
    Process { command: Vec<String>, workdir: Option<PathBuf> },
    /// A container from a local image, its `port` published on 127.0.0.1 only. `command`
    /// overrides the image's CMD (same placeholders). With `swarm`, each instance is a Docker
    /// Swarm service of one task instead (`driver = "swarm"`), placed by Swarm anywhere in the
    /// swarm that the constraints allow, its port published in host mode.
    Docker {
        image: String,
        port: u16,
        command: Option<Vec<String>>,
        cpus: Option<f64>,
        memory: Option<u64>,
        swarm: Option<SwarmPlacement>,
    },
}

/// Where Swarm may place a `driver = "swarm"` group's tasks.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SwarmPlacement {
    /// Swarm placement constraints, e.g. `node.labels.zone==a`.
    pub constraints: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PolicyConfig {
    Step(StepPolicy),
    TargetTracking(TargetTracking),
}

impl PolicyConfig {
    pub fn metric(&self) -> &str {
        match self {
            PolicyConfig::Step(p) => &p.metric,
            PolicyConfig::TargetTracking(p) => &p.metric,
        }
    }
}

/// A CloudWatch-style alarm (`datapoints_to_alarm` of the last `evaluation_periods` periods
/// breaching) that applies `adjustment` while it is in alarm, honouring the group's cooldown.
#[derive(Debug, Clone, PartialEq)]
pub struct StepPolicy {
    pub metric: String,
    pub statistic: Statistic,
    pub period: Duration,
    pub evaluation_periods: u32,
    pub datapoints_to_alarm: u32,
    pub threshold: f64,
    pub comparison: Comparison,
    pub adjustment: Adjustment,
    pub missing_data: MissingData,
}

/// Keeps a metric near `target` by sizing the group proportionally (like AWS target tracking and
/// the Kubernetes HPA): scale-out acts at once, scale-in only on the highest recommendation of
/// the stabilization window.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetTracking {
    pub metric: String,
    pub target: f64,
    /// No action while |metric / target - 1| is within this (HPA: 0.1).
    pub tolerance: f64,
    pub scale_in_stabilization: Duration,
    pub scale_out_stabilization: Duration,
    /// After a scale-in, the next one waits this long (0 = HPA behaviour: step down as the
    /// stabilization window slides). Longer means fewer, larger steps down.
    pub scale_in_cooldown: Duration,
    pub disable_scale_in: bool,
    /// Most instances one scale-in may remove, as a fraction of the group (1.0 = no limit).
    pub max_scale_in_fraction: f64,
    /// Extra capacity added on scale-out, as a fraction (0.0 = none), to absorb a rising load.
    pub headroom: f64,
    /// Model the demand from request counts when CPU saturates (see `flotilla-fleet::policy`).
    pub predictive: bool,
    /// Predictive only: capacity for this many standard deviations of the last 30 minutes'
    /// demand on top of the forecast (0.5).
    pub noise_margin: f64,
    /// Predictive only: scale in only when the smaller group keeps this share spare (0.3).
    pub scale_in_margin: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Statistic {
    Avg,
    Min,
    Max,
    Sum,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    Greater,
    GreaterOrEqual,
    Less,
    LessOrEqual,
}

impl Comparison {
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Comparison::Greater => value > threshold,
            Comparison::GreaterOrEqual => value >= threshold,
            Comparison::Less => value < threshold,
            Comparison::LessOrEqual => value <= threshold,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Adjustment {
    /// `+2` / `-1`: add or remove this many instances.
    Change(i64),
    /// `+50%` / `-25%`: relative to the current capacity, at least one instance.
    Percent(i64),
    /// `=4`: set the capacity.
    Exact(u32),
}

impl Adjustment {
    /// The new capacity (before the group's `[min, max]` clamp).
    pub fn apply(self, current: u32) -> u32 {
        match self {
            Adjustment::Change(n) => (current as i64 + n).max(0) as u32,
            Adjustment::Percent(p) => {
                let delta = (current as f64 * p as f64 / 100.0).abs().ceil().max(1.0) as i64;
                (current as i64 + delta * p.signum()).max(0) as u32
            }
            Adjustment::Exact(n) => n,
        }
    }
}

/// What a period without data counts as (CloudWatch's TreatMissingData).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingData {
    /// The alarm keeps its state.
    Missing,
    Ignore,
    Breaching,
    NotBreaching,
}

/// The policy a group gets when it names none: `examples/scaling/recommended.toml` (predictive
/// CPU target tracking; see bench/scaling.sh for how it compares). `policies = []` turns it off.
pub fn recommended_policy() -> PolicyConfig {
    PolicyConfig::TargetTracking(TargetTracking {
        metric: "cpu".into(),
        target: 100.0,
        tolerance: 0.1,
        scale_in_stabilization: Duration::from_secs(600),
        scale_out_stabilization: Duration::ZERO,
        scale_in_cooldown: Duration::from_secs(1200),
        disable_scale_in: false,
        max_scale_in_fraction: 1.0,
        headroom: 0.0,
        predictive: true,
        noise_margin: 0.0,
        scale_in_margin: 0.6,
    })
}

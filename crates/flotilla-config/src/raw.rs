//! The file as written: serde structs that mirror the TOML and keep spans for later errors.
//! Nothing here is validated; `validate.rs` turns this into the typed [`crate::Config`].

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

pub(crate) type S<T> = Spanned<T>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub edge: Option<S<RawEdge>>,
    pub admin: Option<S<RawAdmin>>,
    #[serde(default)]
    pub routes: Vec<S<RawRoute>>,
    #[serde(default)]
    pub target_groups: BTreeMap<S<String>, S<RawTargetGroup>>,
    pub cache: Option<S<RawCache>>,
    #[serde(default)]
    pub cache_behaviors: BTreeMap<S<String>, S<RawBehavior>>,
    #[serde(default)]
    pub groups: BTreeMap<S<String>, S<RawGroup>>,
    pub watch: Option<S<RawWatch>>,
    #[serde(default)]
    pub alarms: Vec<S<RawAlarm>>,
    #[serde(default)]
    pub notifiers: BTreeMap<S<String>, S<RawNotifier>>,
    #[serde(default)]
    pub slos: Vec<S<RawSlo>>,
    pub budget: Option<S<RawAccountBudget>>,
    pub images: Option<S<RawImages>>,
    pub cluster: Option<S<RawCluster>>,
    pub fleet: Option<S<RawFleet>>,
}

/// `[fleet]`: settings of the fleet as a whole.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFleet {
    pub deployment: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCluster {
    pub node: Option<S<String>>,
    pub redis: Option<S<RawRedis>>,
    pub lease: Option<S<String>>,
    pub prefix: Option<S<String>>,
    pub secret: Option<S<String>>,
    pub timeout: Option<S<String>>,
    pub invalidation_wait: Option<S<String>>,
    pub heartbeat: Option<S<String>>,
}

/// `redis = "redis://…"` or `redis = { url = "…", password = "${REDIS_PASSWORD}" }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawRedis {
    Url(String),
    Table { url: String, password: Option<String> },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawImages {
    pub route: Option<S<String>>,
    pub source: Option<S<String>>,
    pub formats: Option<S<Vec<S<String>>>>,
    pub quality: Option<S<RawImageQuality>>,
    pub max_source_pixels: Option<S<i64>>,
    pub max_source_bytes: Option<S<SizeLit>>,
    pub signing_key: Option<S<String>>,
    pub presets: Option<BTreeMap<S<String>, S<RawPreset>>>,
    pub workers: Option<S<i64>>,
    pub queue: Option<S<i64>>,
    pub avif_speed: Option<S<i64>>,
    pub ttl: Option<S<String>>,
    pub source_timeout: Option<S<String>>,
    pub source_host: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawImageQuality {
    pub jpeg: Option<S<i64>>,
    pub webp: Option<S<i64>>,
    pub avif: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPreset {
    pub width: Option<S<i64>>,
    pub height: Option<S<i64>>,
    pub fit: Option<S<String>>,
    pub quality: Option<S<i64>>,
    pub upscale: Option<S<bool>>,
}

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
    pub timeout: Option<S<String>>,
    pub attempts: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCache {
    pub memory: Option<S<SizeLit>>,
    pub max_object: Option<S<SizeLit>>,
    pub disk: Option<S<RawDisk>>,
    pub parent: Option<S<String>>,
    pub parent_timeout: Option<S<String>>,
    pub fill_buffer: Option<S<SizeLit>>,
    pub fill_timeout: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDisk {
    pub path: Option<S<String>>,
    pub size: Option<S<SizeLit>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBehavior {
    pub min_ttl: Option<S<String>>,
    pub default_ttl: Option<S<String>>,
    pub max_ttl: Option<S<String>>,
    pub compress: Option<S<bool>>,
    pub key: Option<S<RawKey>>,
    pub stale_while_revalidate: Option<S<String>>,
    pub stale_if_error: Option<S<String>>,
    pub error_ttl: Option<S<String>>,
    pub other_cookies: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawKey {
    pub query: Option<S<QueryLit>>,
    #[serde(default)]
    pub headers: Vec<S<String>>,
    #[serde(default)]
    pub cookies: Vec<S<String>>,
}

/// `"all"`, `"none"`, or a list of parameter names.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum QueryLit {
    Word(String),
    List(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEdge {
    #[serde(default)]
    pub listen: Vec<S<String>>,
    pub zone: Option<S<String>>,
    pub tls: Option<S<RawTls>>,
    pub access_log: Option<bool>,
    pub workers: Option<S<i64>>,
    pub request_id_header: Option<S<String>>,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub trusted_proxies: Vec<S<String>>,
    pub proxy_protocol: Option<bool>,
    pub escaped_slashes: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTimeouts {
    pub header_read: Option<S<String>>,
    pub idle: Option<S<String>>,
    pub connect: Option<S<String>>,
    pub target_response: Option<S<String>>,
    pub shutdown: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    pub max_header_bytes: Option<S<SizeLit>>,
    pub max_headers: Option<S<i64>>,
    pub max_request_body: Option<S<SizeLit>>,
    pub max_connections: Option<S<i64>>,
    pub max_connections_per_ip: Option<S<i64>>,
    pub max_retry_body: Option<S<SizeLit>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    #[serde(default)]
    pub listen: Vec<S<String>>,
    #[serde(default)]
    pub certificates: Vec<S<RawCert>>,
    pub min_version: Option<S<String>>,
    pub redirect_http: Option<bool>,
    /// `[edge.tls.acme]` (one certificate) or `[[edge.tls.acme]]` (several).
    pub acme: Option<S<OneOrMany<RawAcme>>>,
}

/// A table or an array of tables. Not `#[serde(untagged)]`: that buffers the input and loses
/// the spans every error location comes from, so the visitor hands the map or the sequence on.
/// (Each array element keeps its own span; a single table is located by the key's span.)
#[derive(Debug)]
pub(crate) enum OneOrMany<T> {
    One(T),
    Many(Vec<S<T>>),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for V<T> {
            type Value = OneOrMany<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a table or an array of tables")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(OneOrMany::One)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                Vec::<S<T>>::deserialize(serde::de::value::SeqAccessDeserializer::new(seq)).map(OneOrMany::Many)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAcme {
    pub email: Option<S<String>>,
    #[serde(default)]
    pub domains: Vec<S<String>>,
    pub directory: Option<S<String>>,
    pub challenge: Option<S<String>>,
    pub storage: Option<S<String>>,
    pub trust: Option<S<String>>,
    pub renew_before: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCert {
    pub cert: S<String>,
    pub key: S<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub listen: Option<S<String>>,
    pub token: Option<S<String>>,
    pub read_token: Option<S<String>>,
    pub protect_reads: Option<S<bool>>,
    pub open_metrics: Option<S<bool>>,
    pub allowed_hosts: Option<S<Vec<S<String>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub host: Option<S<String>>,
    pub path: Option<S<String>>,
    pub target_group: Option<S<String>>,
    pub origin: Option<S<String>>,
    pub cache: Option<S<String>>,
    pub headers: Option<S<RawHeaders>>,
    pub rate_limit: Option<S<RawRateLimit>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHeaders {
    pub hsts: Option<S<String>>,
    pub csp: Option<S<String>>,
    pub frame_options: Option<S<String>>,
    pub content_type_options: Option<S<bool>>,
    pub referrer_policy: Option<S<String>>,
    pub permissions_policy: Option<S<String>>,
    #[serde(default)]
    pub set: BTreeMap<S<String>, S<String>>,
    #[serde(default)]
    pub remove: Vec<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRateLimit {
    pub rate: Option<S<RateLit>>,
    pub burst: Option<S<i64>>,
    pub key: Option<S<String>>,
}

/// `10` (per second) or `"600/min"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum RateLit {
    Number(f64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTargetGroup {
    #[serde(default)]
    pub targets: Vec<S<RawTarget>>,
    pub algorithm: Option<S<String>>,
    pub hash_header: Option<S<String>>,
    pub deregistration_delay: Option<S<String>>,
    pub slow_start: Option<S<String>>,
    pub stickiness: Option<S<RawStickiness>>,
    pub retries: Option<S<i64>>,
    pub health_check: Option<S<RawHealthCheck>>,
    pub passive: Option<S<RawPassive>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawTarget {
    Addr(String),
    Full { addr: String, zone: Option<String>, weight: Option<i64> },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStickiness {
    pub enabled: Option<bool>,
    pub cookie: Option<S<String>>,
    pub duration: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealthCheck {
    pub enabled: Option<bool>,
    pub path: Option<S<String>>,
    pub interval: Option<S<String>>,
    pub timeout: Option<S<String>>,
    pub healthy_threshold: Option<S<i64>>,
    pub unhealthy_threshold: Option<S<i64>>,
    pub matcher: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPassive {
    pub consecutive_5xx: Option<S<i64>>,
    pub consecutive_connect_failures: Option<S<i64>>,
}

/// A size written as a string with units or as a plain byte count.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum SizeLit {
    Bytes(i64),
    Text(String),
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

/// A number written as an integer, a float, or (for adjustments) a string like "+2" or "50%".
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Num {
    Int(i64),
    Float(f64),
    Text(String),
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

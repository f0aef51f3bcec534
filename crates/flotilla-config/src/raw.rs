//! The file as written: serde structs that mirror the TOML and keep spans for later errors.
//! Nothing here is validated; `validate.rs` turns this into the typed [`crate::Config`].

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use crate::cluster::raw::RawCluster;
use crate::fleet::raw::{RawFleet, RawGroup};
use crate::images::raw::RawImages;
use crate::watch::raw::{RawAccountBudget, RawAlarm, RawNotifier, RawSlo, RawWatch};

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

/// A number written as an integer, a float, or (for adjustments) a string like "+2" or "50%".
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Num {
    Int(i64),
    Float(f64),
    Text(String),
}

//! `[cluster]` as written (see `crate::raw`).

use serde::Deserialize;

use crate::raw::S;

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

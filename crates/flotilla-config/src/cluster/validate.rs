//! Raw → typed for `[cluster]`.

use std::time::Duration;

use super::model::{ClusterConfig, RedisConfig};
use super::raw::{RawCluster, RawRedis};
use crate::ctx::{valid_name, Ctx};
use crate::raw::S;

pub(crate) fn cluster(cx: &mut Ctx<'_>, raw: &S<RawCluster>) -> Option<ClusterConfig> {
    let r = raw.get_ref();
    let before = cx.errors.len();
    let node = match &r.node {
        Some(n) => {
            let name = cx.expand(n, "cluster.node");
            if !valid_name(&name) {
                cx.err(n, format!("cluster.node {name:?} must be letters, digits, '-' or '_'"));
            }
            name
        }
        None => host_name(),
    };
    let redis = match &r.redis {
        None => {
            cx.err(raw, "[cluster] needs redis, e.g. redis = \"redis://127.0.0.1:6379/0\"");
            None
        }
        Some(spanned) => {
            let (url_s, password) = match spanned.get_ref() {
                RawRedis::Url(u) => (S::new(spanned.span(), u.clone()), None),
                RawRedis::Table { url, password } => {
                    (S::new(spanned.span(), url.clone()), password.as_ref().map(|p| S::new(spanned.span(), p.clone())))
                }
            };
            let written = cx.expand(&url_s, "cluster.redis.url");
            let password = password.map(|p| cx.expand(&p, "cluster.redis.password")).filter(|p| !p.is_empty());
            // The password leaves the URL here, so the URL can be logged and shown; errors name
            // the scheme only (the URL as written may hold the password).
            let (url, in_url) = RedisConfig::split_password(&written).unwrap_or_else(|e| {
                cx.err(spanned, format!("cluster.redis: {e}"));
                (String::new(), None)
            });
            if in_url.is_some() && password.is_some() {
                cx.err(spanned, "cluster.redis: give the password in the URL or as password, not both");
            }
            if !(url.starts_with("redis://") || url.starts_with("unix://")) {
                let scheme = written.split_once("://").map_or("no scheme", |(s, _)| s);
                cx.err(
                    spanned,
                    format!("cluster.redis: the URL must start with redis:// (or unix://), not {scheme:?}"),
                );
            }
            Some(RedisConfig { url, password: password.or(in_url) })
        }
    };
    let lease = cx.duration(&r.lease, "cluster.lease", Duration::from_secs(10));
    if lease < Duration::from_secs(1) {
        if let Some(l) = &r.lease {
            cx.err(l, "cluster.lease must be at least 1s");
        }
    }
    let heartbeat = cx.duration(&r.heartbeat, "cluster.heartbeat", Duration::from_secs(1));
    if !(Duration::from_millis(100)..=Duration::from_secs(60)).contains(&heartbeat) {
        if let Some(h) = &r.heartbeat {
            cx.err(h, "cluster.heartbeat must be between 100ms and 60s");
        }
    }
    let timeout = cx.duration(&r.timeout, "cluster.timeout", Duration::from_millis(20));
    if !(Duration::from_millis(1)..=Duration::from_secs(1)).contains(&timeout) {
        if let Some(t) = &r.timeout {
            cx.err(t, "cluster.timeout must be between 1ms and 1s (it bounds how long a request waits on Redis)");
        }
    }
    let invalidation_wait = cx.duration(&r.invalidation_wait, "cluster.invalidation_wait", Duration::from_secs(5));
    if invalidation_wait > Duration::from_secs(300) {
        if let Some(w) = &r.invalidation_wait {
            cx.err(w, "cluster.invalidation_wait must be at most 300s");
        }
    }
    let prefix = match &r.prefix {
        Some(p) => {
            let v = p.get_ref().clone();
            if v.is_empty() || !v.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c)) {
                cx.err(p, "cluster.prefix must be non-empty letters, digits, '-', '_', '.' or ':'");
            }
            v
        }
        None => "flotilla".into(),
    };
    let secret = r.secret.as_ref().map(|s| cx.expand(s, "cluster.secret")).filter(|s| !s.is_empty());
    if r.secret.is_none() {
        cx.warnings.push(
            "cluster.secret is not set: sticky cookies are the same on every node but are not signed with a secret"
                .into(),
        );
    }
    if cx.errors.len() > before {
        return None;
    }
    Some(ClusterConfig { node, redis: redis?, lease, prefix, secret, timeout, invalidation_wait, heartbeat })
}

/// The default node name: the kernel's host name (what `hostname` prints).
pub(crate) fn host_name() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name: String = name.trim().chars().map(|c| if valid_name(&c.to_string()) { c } else { '-' }).collect();
    if name.is_empty() {
        "node".into()
    } else {
        name
    }
}

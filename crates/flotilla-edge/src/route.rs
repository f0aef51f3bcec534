//! The route table: first match on (host, path prefix) wins, as ALB listener rules do. A route
//! may name a cache behaviour; its rule (TTL policy, key policy, counters) is resolved here once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use flotilla_cache::{Behavior, KeyPolicy, OtherCookies, QueryKey};
use flotilla_config::{CacheBehaviorConfig, HostPattern, OtherCookiesConfig, PathPattern, QueryKeyConfig, RouteOrigin};
use http::header::HeaderName;
use prometheus_client::metrics::counter::Counter;

use crate::group::TargetGroup;
use crate::metrics::{CacheLabels, EdgeMetrics};

pub(crate) struct Route {
    pub host: HostPattern,
    pub path: PathPattern,
    pub backend: RouteBackend,
    pub cache: Option<Arc<CacheRule>>,
    pub headers: Option<Arc<crate::policy::Headers>>,
    pub limiter: Option<crate::policy::RateLimiter>,
    /// Every answer on this route, by source and class (`flotilla_route_requests_total`).
    pub counters: [[Counter; 5]; 3],
    /// Its place in the table (what the request's `Outcome` keeps).
    pub index: usize,
}

/// Where a route sends its requests.
pub(crate) enum RouteBackend {
    Group(Arc<TargetGroup>),
    Files(Arc<crate::files::FilesOrigin>),
}

/// A cache behaviour as the request path uses it.
pub(crate) struct CacheRule {
    pub behavior: Behavior,
    /// Store a gzip representation of compressible responses too.
    pub compress: bool,
    pub key: KeyPolicy,
    /// Cookies outside `key.cookies`: forwarded (credentialed requests bypass unshared
    /// objects) or stripped (see `flotilla_cache::credentials`).
    pub other_cookies: OtherCookies,
    pub hits: Counter,
    pub misses: Counter,
    pub stale: Counter,
    pub passes: Counter,
    /// Body bytes answered from stored entries.
    pub cache_bytes: Counter,
    /// Body bytes fetched from the origin on this behaviour's routes.
    pub origin_bytes: Counter,
}

impl CacheRule {
    /// A rule not written in `[cache_behaviors]` (the image route's), counted under `name`.
    pub(crate) fn with(behavior: Behavior, key: KeyPolicy, compress: bool, name: &str, metrics: &EdgeMetrics) -> Self {
        let counter = |result: &'static str| {
            metrics.cache.get_or_create(&CacheLabels { behavior: name.to_string(), result }).clone()
        };
        Self {
            behavior,
            compress,
            key,
            // Image variants never depend on the visitor: cookies never reach the transformer.
            other_cookies: OtherCookies::Strip,
            hits: counter("hit"),
            misses: counter("miss"),
            stale: counter("stale"),
            passes: counter("pass"),
            cache_bytes: bytes(metrics, name, "cache"),
            origin_bytes: bytes(metrics, name, "origin"),
        }
    }

    fn new(cfg: &CacheBehaviorConfig, metrics: &EdgeMetrics) -> Self {
        let counter = |result: &'static str| {
            metrics.cache.get_or_create(&CacheLabels { behavior: cfg.name.clone(), result }).clone()
        };
        Self {
            compress: cfg.compress,
            behavior: Behavior {
                min_ttl: cfg.min_ttl,
                default_ttl: cfg.default_ttl,
                max_ttl: cfg.max_ttl,
                stale_while_revalidate: cfg.stale_while_revalidate,
                stale_if_error: cfg.stale_if_error,
                error_ttl: cfg.error_ttl,
            },
            key: KeyPolicy {
                query: match &cfg.key.query {
                    QueryKeyConfig::All => QueryKey::All,
                    QueryKeyConfig::None => QueryKey::None,
                    QueryKeyConfig::Only(names) => QueryKey::Only(names.clone()),
                },
                headers: cfg.key.headers.iter().filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok()).collect(),
                cookies: cfg.key.cookies.clone(),
            },
            other_cookies: match cfg.other_cookies {
                OtherCookiesConfig::Pass => OtherCookies::Pass,
                OtherCookiesConfig::Strip => OtherCookies::Strip,
            },
            hits: counter("hit"),
            misses: counter("miss"),
            stale: counter("stale"),
            passes: counter("pass"),
            cache_bytes: bytes(metrics, &cfg.name, "cache"),
            origin_bytes: bytes(metrics, &cfg.name, "origin"),
        }
    }
}

fn bytes(metrics: &EdgeMetrics, behavior: &str, source: &'static str) -> Counter {
    metrics
        .cache_bytes_served
        .get_or_create(&crate::metrics::CacheBytesLabels { behavior: behavior.to_string(), source })
        .clone()
}

/// A route as its metrics name it: the path pattern, after the host when the route names one.
fn route_label(r: &flotilla_config::RouteConfig) -> String {
    let path = match &r.path {
        PathPattern::Prefix(p) => format!("{p}*"),
        PathPattern::Exact(p) => p.clone(),
    };
    match &r.host {
        HostPattern::Any => path,
        HostPattern::Exact(h) => format!("{h}{path}"),
        HostPattern::Suffix(s) => format!("*{s}{path}"),
    }
}

pub(crate) struct Routes {
    routes: Vec<Route>,
}

impl Routes {
    pub(crate) fn empty() -> Self {
        Self { routes: Vec::new() }
    }

    pub(crate) fn new(
        cfg: &[flotilla_config::RouteConfig],
        groups: &HashMap<String, Arc<TargetGroup>>,
        behaviors: &BTreeMap<String, CacheBehaviorConfig>,
        metrics: &EdgeMetrics,
    ) -> Self {
        let rules: HashMap<&str, Arc<CacheRule>> =
            behaviors.iter().map(|(name, b)| (name.as_str(), Arc::new(CacheRule::new(b, metrics)))).collect();
        let routes = cfg
            .iter()
            .filter_map(|r| {
                Some(Route {
                    index: 0,
                    counters: metrics.route_counters(&route_label(r)),
                    host: r.host.clone(),
                    path: r.path.clone(),
                    backend: match &r.origin {
                        RouteOrigin::TargetGroup(name) => RouteBackend::Group(groups.get(name)?.clone()),
                        RouteOrigin::Files(dir) => RouteBackend::Files(Arc::new(crate::files::FilesOrigin::new(dir))),
                    },
                    cache: r.cache.as_deref().and_then(|c| rules.get(c).cloned()),
                    headers: r.headers.as_ref().map(|h| Arc::new(crate::policy::Headers::new(h))),
                    limiter: r.rate_limit.as_ref().map(|l| {
                        let route = match &r.path {
                            PathPattern::Prefix(p) => format!("{p}*"),
                            PathPattern::Exact(p) => p.clone(),
                        };
                        let limited = metrics
                            .rate_limited
                            .get_or_create(&crate::metrics::RouteLabels { route: route.clone() })
                            .clone();
                        crate::policy::RateLimiter::new(format!("{:?}{route}", r.host), l, limited)
                    }),
                })
            })
            .collect::<Vec<Route>>()
            .into_iter()
            .enumerate()
            .map(|(index, r)| Route { index, ..r })
            .collect();
        Self { routes }
    }

    pub(crate) fn get(&self, index: usize) -> Option<&Route> {
        self.routes.get(index)
    }

    pub(crate) fn find(&self, host: &str, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.host.matches(host) && r.path.matches(path))
    }
}

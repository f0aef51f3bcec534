//! The edge's Prometheus metrics, named in one place. Hot-path handles (per-target counters,
//! per-group histograms) are resolved once when a target or group is created.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub target_group: String,
    /// The target's address, or "-" for what the edge or its cache answered.
    pub target: String,
    pub class: &'static str,
    /// Who answered (see [`Source`]): what clients saw is the sum over all three.
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteClassLabels {
    /// The route as configured: its path pattern, after its host when it names one.
    pub route: String,
    pub class: &'static str,
    pub source: &'static str,
}

/// Who answered a request — ALB's `HTTPCode_Target_*` vs `HTTPCode_ELB_*`, plus the cache.
/// Alarms, SLOs and the dashboard count every source (what clients saw); `source="target"`
/// alone is the targets' view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Source {
    /// A target (or a `files:` directory, or the image transformer) answered.
    Target,
    /// The edge answered itself: a target it could not reach (502), none available (503), one
    /// too slow (504), a request it refused (4xx), a redirect.
    #[default]
    Edge,
    /// The cache answered from a stored object.
    Cache,
}

impl Source {
    pub const ALL: [Source; 3] = [Source::Target, Source::Edge, Source::Cache];

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Target => "target",
            Source::Edge => "edge",
            Source::Cache => "cache",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabels {
    pub target_group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub target_group: String,
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    pub behavior: String,
    /// hit | miss | stale | pass
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheBytesLabels {
    pub behavior: String,
    /// cache (answered from a stored entry) | origin (fetched from the origin)
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The route's path pattern as configured, e.g. "/api/*".
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// Who failed and how, e.g. "client_bad_request", "no_route", "target_connect", "target_timeout".
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ImageLabels {
    /// A preset name, or "adhoc" for signed ad-hoc sizes.
    pub preset: String,
    pub format: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// too_large | corrupt | unsupported_format | busy | source_error | bad_signature | …
    pub reason: &'static str,
}

pub const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

pub struct EdgeMetrics {
    pub registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    /// Every answer by route, status class and source.
    pub route_requests: Family<RouteClassLabels, Counter>,
    /// Latency per target group (lock-free; encoded by hand, see latency.rs).
    pub latency: crate::latency::Latencies,
    pub targets: Family<StateLabels, Gauge>,
    pub retries: Family<GroupLabels, Counter>,
    pub fail_open: Family<GroupLabels, Counter>,
    pub ejections: Family<GroupLabels, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
    pub cache: Family<CacheLabels, Counter>,
    pub cache_invalidations: Counter,
    /// Cached-route misses the cache parent answered / skipped to the origin (parent down).
    pub shield_parent: Counter,
    pub shield_fallbacks: Counter,
    pub rate_limited: Family<RouteLabels, Counter>,
    pub cache_invalidation_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    pub cache_bytes_served: Family<CacheBytesLabels, Counter>,
    pub cache_memory_evictions: Counter,
    pub cache_entries: Gauge,
    pub cache_bytes: Gauge,
    pub cache_disk_objects: Gauge,
    pub cache_fill_bytes: Gauge,
    pub cache_disk_bytes: Gauge,
    pub cache_disk_errors: Counter,
    pub cache_disk_evictions: Counter,
    pub active_connections: Gauge,
    pub connections: Counter,
    pub connections_refused_per_ip: Counter,
    pub image_transforms: Family<ImageLabels, Counter>,
    pub image_seconds: Family<ImageLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
    pub image_bytes_in: Counter,
    pub image_bytes_out: Family<ImageLabels, Counter>,
    pub image_refusals: Family<RefusalLabels, Counter>,
}

impl EdgeMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("flotilla");
        let requests = Family::<RequestLabels, Counter>::default();
        let route_requests = Family::<RouteClassLabels, Counter>::default();
        let targets = Family::<StateLabels, Gauge>::default();
        let retries = Family::<GroupLabels, Counter>::default();
        let fail_open = Family::<GroupLabels, Counter>::default();
        let ejections = Family::<GroupLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let cache = Family::<CacheLabels, Counter>::default();
        let cache_invalidations = Counter::default();
        let shield_parent = Counter::default();
        let shield_fallbacks = Counter::default();
        let rate_limited = Family::<RouteLabels, Counter>::default();
        let cache_invalidation_seconds = Counter::<f64, std::sync::atomic::AtomicU64>::default();
        let cache_bytes_served = Family::<CacheBytesLabels, Counter>::default();
        let cache_memory_evictions = Counter::default();
        let cache_entries = Gauge::default();
        let cache_bytes = Gauge::default();
        let cache_disk_objects = Gauge::default();
        let cache_fill_bytes = Gauge::default();
        let cache_disk_bytes = Gauge::default();
        let cache_disk_errors = Counter::default();
        let cache_disk_evictions = Counter::default();
        let active_connections = Gauge::default();
        let connections = Counter::default();
        let connections_refused_per_ip = Counter::default();
        let image_transforms = Family::<ImageLabels, Counter>::default();
        let image_seconds = Family::<ImageLabels, Counter<f64, std::sync::atomic::AtomicU64>>::default();
        let image_bytes_in = Counter::default();
        let image_bytes_out = Family::<ImageLabels, Counter>::default();
        let image_refusals = Family::<RefusalLabels, Counter>::default();
        registry.register(
            "http_requests",
            "Answers by target group, target, status class and source (target, edge, cache): the sum \
             over sources is what clients saw",
            requests.clone(),
        );
        registry.register(
            "route_requests",
            "Answers by route, status class and source (target, edge, cache)",
            route_requests.clone(),
        );
        registry.register(
            "targets",
            "Targets by target group and state (initial, healthy, unhealthy, draining)",
            targets.clone(),
        );
        registry.register("retries", "Requests retried on another target", retries.clone());
        registry.register(
            "fail_open",
            "Requests sent to an unhealthy target because no target was healthy",
            fail_open.clone(),
        );
        registry.register("target_ejections", "Targets ejected by passive health checks", ejections.clone());
        registry.register("edge_errors", "Responses the edge generated itself, by cause", errors.clone());
        registry.register(
            "cache_requests",
            "Requests on cached routes by behaviour and result (hit, miss, stale, pass)",
            cache.clone(),
        );
        registry.register("cache_invalidations", "Invalidation requests applied", cache_invalidations.clone());
        registry.register(
            "cache_shield_parent",
            "Cached-route misses answered by the cache parent",
            shield_parent.clone(),
        );
        registry.register(
            "cache_shield_fallbacks",
            "Cached-route misses sent straight to the origin because the cache parent was down",
            shield_fallbacks.clone(),
        );
        registry.register("rate_limited", "Requests refused with 429 by a route's rate limit", rate_limited.clone());
        registry.register(
            "cache_invalidation_seconds",
            "Time spent applying invalidations (divide by cache_invalidations for the mean)",
            cache_invalidation_seconds.clone(),
        );
        registry.register(
            "cache_body_bytes",
            "Body bytes on cached routes, by behaviour and source (cache or origin)",
            cache_bytes_served.clone(),
        );
        registry.register(
            "cache_memory_evictions",
            "Entries the memory tier evicted to stay within its budget",
            cache_memory_evictions.clone(),
        );
        registry.register("cache_memory_entries", "URLs held in the memory tier", cache_entries.clone());
        registry.register("cache_memory_bytes", "Weighted bytes held in the memory tier", cache_bytes.clone());
        registry.register("cache_disk_objects", "Objects held in the disk tier", cache_disk_objects.clone());
        registry.register(
            "cache_fill_bytes",
            "Body bytes cache fills hold while they receive them (bounded by cache.fill_buffer)",
            cache_fill_bytes.clone(),
        );
        registry.register("cache_disk_bytes", "Bytes of files held in the disk tier", cache_disk_bytes.clone());
        registry.register(
            "cache_disk_errors",
            "Disk tier reads and writes that failed (damaged objects are dropped, never served)",
            cache_disk_errors.clone(),
        );
        registry.register(
            "cache_disk_evictions",
            "Objects the disk tier removed to stay in its size",
            cache_disk_evictions.clone(),
        );
        registry.register("active_connections", "Open client connections", active_connections.clone());
        registry.register("connections", "Client connections accepted", connections.clone());
        registry.register(
            "connections_refused_per_ip",
            "Client connections closed at once: their address already had limits.max_connections_per_ip open",
            connections_refused_per_ip.clone(),
        );
        registry.register("image_transforms", "Image variants made, by preset and format", image_transforms.clone());
        registry.register(
            "image_transform_seconds",
            "CPU-pool time spent making image variants, by preset and format",
            image_seconds.clone(),
        );
        registry.register("image_source_bytes", "Bytes of originals transformed", image_bytes_in.clone());
        registry.register("image_output_bytes", "Bytes of image variants made", image_bytes_out.clone());
        registry.register("image_refusals", "Image requests refused, by reason", image_refusals.clone());
        Self {
            registry,
            requests,
            route_requests,
            latency: crate::latency::Latencies::default(),
            targets,
            retries,
            fail_open,
            ejections,
            errors,
            cache,
            cache_invalidations,
            shield_parent,
            shield_fallbacks,
            rate_limited,
            cache_invalidation_seconds,
            cache_bytes_served,
            cache_memory_evictions,
            cache_entries,
            cache_bytes,
            cache_disk_objects,
            cache_fill_bytes,
            cache_disk_bytes,
            cache_disk_errors,
            cache_disk_evictions,
            active_connections,
            connections,
            connections_refused_per_ip,
            image_transforms,
            image_seconds,
            image_bytes_in,
            image_bytes_out,
            image_refusals,
        }
    }

    pub(crate) fn target_counters(&self, group: &str, target: &str) -> [Counter; 5] {
        CLASSES.map(|class| {
            let labels = RequestLabels { target_group: group.into(), target: target.into(), class, source: "target" };
            self.requests.get_or_create(&labels).clone()
        })
    }

    /// A group's answers by the edge and by the cache (index [`Source::index`] - 1), per class.
    pub(crate) fn group_counters(&self, group: &str) -> [[Counter; 5]; 2] {
        [Source::Edge, Source::Cache].map(|source| {
            CLASSES.map(|class| {
                let labels =
                    RequestLabels { target_group: group.into(), target: "-".into(), class, source: source.as_str() };
                self.requests.get_or_create(&labels).clone()
            })
        })
    }

    /// A route's answers per source and class.
    pub(crate) fn route_counters(&self, route: &str) -> [[Counter; 5]; 3] {
        Source::ALL.map(|source| {
            CLASSES.map(|class| {
                let labels = RouteClassLabels { route: route.into(), class, source: source.as_str() };
                self.route_requests.get_or_create(&labels).clone()
            })
        })
    }

    /// Drops a removed target's series. A fleet replaces instances on new ports for as long as
    /// it runs: kept, their series would grow `/metrics` and the watch's store without bound.
    pub(crate) fn forget_target(&self, group: &str, target: &str) {
        for class in CLASSES {
            self.requests.remove(&RequestLabels {
                target_group: group.into(),
                target: target.into(),
                class,
                source: "target",
            });
        }
    }

    pub(crate) fn error(&self, kind: &'static str) {
        self.errors.get_or_create(&ErrorLabels { kind }).inc();
    }
}

impl Default for EdgeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Status class index 0..5 for 1xx..5xx.
pub(crate) fn class_index(status: u16) -> usize {
    (usize::from(status / 100)).clamp(1, 5) - 1
}

//! The node's cluster metrics (per node, as Prometheus expects; cluster totals are the sum).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::Cluster;

pub(crate) struct Metrics {
    pub redis_up: Gauge,
    pub nodes: Gauge,
    pub name_conflict: Gauge,
    pub journaled: Gauge,
    pub invalidations_taken: Counter,
    pub invalidations_published: Counter,
    pub invalidations_applied: Counter,
    pub cache_drops: Counter,
    pub ack_wait: Histogram,
    pub ratelimit_decisions: Counter,
    pub ratelimit_fallbacks: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            redis_up: Gauge::default(),
            nodes: Gauge::default(),
            name_conflict: Gauge::default(),
            journaled: Gauge::default(),
            invalidations_taken: Counter::default(),
            invalidations_published: Counter::default(),
            invalidations_applied: Counter::default(),
            cache_drops: Counter::default(),
            ack_wait: Histogram::new([0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
            ratelimit_decisions: Counter::default(),
            ratelimit_fallbacks: Counter::default(),
        }
    }
}

impl Metrics {
    pub(crate) fn encode(&self, cluster: &Cluster) -> String {
        self.journaled.set(cluster.invalidations.journal_len() as i64);
        let mut r = Registry::with_prefix("flotilla_cluster");
        r.register("redis_up", "1 while Redis answers this node's heartbeats", self.redis_up.clone());
        r.register("nodes", "Live nodes this node sees (itself included)", self.nodes.clone());
        r.register(
            "name_conflict",
            "1 while another process runs under this node's name (this one leads nothing meanwhile)",
            self.name_conflict.clone(),
        );
        r.register(
            "invalidations_journaled",
            "Invalidations applied here, waiting for Redis to be published",
            self.journaled.clone(),
        );
        r.register(
            "invalidations_taken",
            "Invalidations this node took from its admin API",
            self.invalidations_taken.clone(),
        );
        r.register(
            "invalidations_published",
            "Invalidations this node appended to the shared stream",
            self.invalidations_published.clone(),
        );
        r.register(
            "invalidations_applied",
            "Other nodes' invalidations applied here",
            self.invalidations_applied.clone(),
        );
        r.register(
            "cache_drops",
            "Whole-cache drops because the stream no longer reached back to this node's last applied id",
            self.cache_drops.clone(),
        );
        r.register(
            "invalidation_ack_wait_seconds",
            "From publishing an invalidation to every live node's acknowledgement",
            self.ack_wait.clone(),
        );
        r.register("ratelimit_decisions", "Rate-limit decisions taken in Redis", self.ratelimit_decisions.clone());
        r.register(
            "ratelimit_fallbacks",
            "Rate-limit decisions taken locally because Redis failed or was slow",
            self.ratelimit_fallbacks.clone(),
        );
        let mut out = String::new();
        if encode(&mut out, &r).is_err() {
            return String::new();
        }
        out.strip_suffix("# EOF\n").map(str::to_string).unwrap_or(out)
    }
}

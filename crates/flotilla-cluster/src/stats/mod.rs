//! Cluster-wide metrics for decisions. Each node publishes, every second, its per-target request
//! totals and in-flight counts and its fine latency buckets (exact: every node uses the same
//! bucket bounds, so merging is a sum per bucket) to Redis with a TTL. Every node folds the
//! others' into monotonic cluster totals, which the fleet's policies then see: a swarm group's
//! leader scales on requests and latency through every edge, not just its own. `/metrics` stays
//! per node, as Prometheus expects.
//!
//! This crate imports neither the edge nor the fleet: the binary reads this node's counts from
//! its edge through [`LocalStats`], hands in the edge's [`BucketLayout`], and adds
//! [`ClusterStats::remote_counts`] to what the fleet's registrar reports (`cluster_bridge.rs`).

mod exposition;
mod fold;
mod quantile;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use fold::{Buckets, Published, TargetStat};
pub use quantile::{quantile, BucketLayout};

use crate::Cluster;
use fold::Remote;

const EVERY: Duration = Duration::from_secs(1);
/// Merged latency snapshots kept (one a second): the longest window a policy may ask for.
const HISTORY: usize = 900;

/// This node's own counters so far, as its edge keeps them (the binary reads them from the edge).
pub trait LocalStats: Send + Sync + 'static {
    fn snapshot(&self) -> Published;
}

pub struct ClusterStats {
    cluster: Arc<Cluster>,
    local: Arc<dyn LocalStats>,
    layout: BucketLayout,
    remote: Mutex<Remote>,
    /// This node's own publications folded the same way, so cluster totals stay monotonic when
    /// a local target goes away.
    own: Mutex<Remote>,
    /// (when, target group → merged cumulative buckets), newest last.
    history: Mutex<VecDeque<(Instant, HashMap<String, Buckets>)>>,
}

impl ClusterStats {
    /// Starts publishing and folding, once a second, on the current runtime.
    pub fn start(cluster: Arc<Cluster>, local: Arc<dyn LocalStats>, layout: BucketLayout) -> Arc<Self> {
        let stats = Arc::new(ClusterStats {
            cluster,
            local,
            layout,
            remote: Mutex::new(Remote::default()),
            own: Mutex::new(Remote::default()),
            history: Mutex::new(VecDeque::new()),
        });
        let s = stats.clone();
        tokio::spawn(async move {
            loop {
                s.tick().await;
                tokio::time::sleep(EVERY).await;
            }
        });
        stats
    }

    async fn tick(&self) {
        let local = self.local.snapshot();
        if let Ok(json) = serde_json::to_string(&local) {
            if let Err(e) = self.cluster.publish_stats(json).await {
                tracing::debug!(error = %e, "cluster: cannot publish this node's aggregates");
            }
        }
        // Our own first sighting counts from zero too: joining never shows as a burst.
        self.own.lock().unwrap_or_else(|e| e.into_inner()).absorb(&[(self.cluster.node().to_string(), local.clone())]);
        let round: Vec<(String, Published)> = match self.cluster.read_stats().await {
            Ok(r) => r.into_iter().filter_map(|(n, j)| Some((n, serde_json::from_str(&j).ok()?))).collect(),
            Err(_) => Vec::new(), // Redis away: the others' totals stand still, ours keep counting
        };
        let merged = {
            let mut remote = self.remote.lock().unwrap_or_else(|e| e.into_inner());
            remote.absorb(&round);
            let mut merged: HashMap<String, Buckets> = remote.latency.clone();
            for (tg, buckets) in &local.latency {
                let m = merged.entry(tg.clone()).or_default();
                for (i, c) in buckets {
                    *m.entry(*i).or_default() += c;
                }
            }
            merged
        };
        let mut h = self.history.lock().unwrap_or_else(|e| e.into_inner());
        h.push_back((Instant::now(), merged));
        while h.len() > HISTORY {
            h.pop_front();
        }
    }

    /// The cluster's latency quantile for `group` over the last `window`, if there is traffic.
    pub fn latency_quantile(&self, group: &str, window: Duration, q: f64) -> Option<f64> {
        let h = self.history.lock().unwrap_or_else(|e| e.into_inner());
        let (_, newest) = h.back()?;
        let since = Instant::now().checked_sub(window)?;
        let older = h.iter().rev().find(|(t, _)| *t <= since).or(h.front()).map(|(_, m)| m)?;
        let empty = Buckets::new();
        quantile(&self.layout, older.get(group).unwrap_or(&empty), newest.get(group)?, q)
    }

    /// The cluster's request and latency series for the watch (see `exposition.rs`).
    pub fn exposition(&self) -> String {
        let (own, remote) =
            (self.own.lock().unwrap_or_else(|e| e.into_inner()), self.remote.lock().unwrap_or_else(|e| e.into_inner()));
        exposition::render(&own, &remote, &self.layout)
    }

    /// Requests so far and requests in flight that the other nodes sent to `addr` in `group`.
    pub fn remote_counts(&self, group: &str, addr: SocketAddr) -> (u64, u32) {
        let r = self.remote.lock().unwrap_or_else(|e| e.into_inner());
        let key = (group.to_string(), addr);
        (r.requests.get(&key).copied().unwrap_or(0), r.in_flight.get(&key).copied().unwrap_or(0))
    }
}

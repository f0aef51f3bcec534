//! Cluster-wide metrics for decisions. Each node publishes, every second, its per-target request
//! totals and in-flight counts and its fine latency buckets (exact: every node uses the same
//! bucket bounds, so merging is a sum per bucket) to Redis with a TTL. Every node folds the
//! others' into monotonic cluster totals, which the fleet's policies then see: a swarm group's
//! leader scales on requests and latency through every edge, not just its own. `/metrics` stays
//! per node, as Prometheus expects.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_cluster::Cluster;
use flotilla_edge::Edge;
use flotilla_fleet::{Registrar, TargetStatus};
use serde::{Deserialize, Serialize};

const EVERY: Duration = Duration::from_secs(1);
/// Merged latency snapshots kept (one a second): the longest window a policy may ask for.
const HISTORY: usize = 900;

/// One target as one node sees it.
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct TargetStat {
    pub requests: u64,
    pub in_flight: u32,
    /// Responses by status class, 1xx to 5xx, so far.
    pub classes: [u64; 5],
}

/// What one node publishes.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Published {
    /// target group → target address → counts.
    pub targets: BTreeMap<String, BTreeMap<String, TargetStat>>,
    /// target group → (bucket index, count so far), non-empty buckets only.
    pub latency: BTreeMap<String, Vec<(u32, u64)>>,
}

type Buckets = BTreeMap<u32, u64>;

/// The other nodes' contributions, folded into monotonic totals.
#[derive(Default)]
pub struct Remote {
    last: HashMap<(String, String, String), u64>,
    requests: HashMap<(String, SocketAddr), u64>,
    in_flight: HashMap<(String, SocketAddr), u32>,
    last_latency: HashMap<(String, String, u32), u64>,
    latency: HashMap<String, Buckets>,
    last_class: HashMap<(String, String, String, usize), u64>,
    /// (target group, status class index) → responses.
    classes: HashMap<(String, usize), u64>,
}

/// How much a counter grew since `last` (a smaller value means its node restarted). A node seen
/// for the first time contributes from now on, so joining never shows as a burst.
fn growth(last: Option<u64>, now: u64) -> u64 {
    match last {
        None => 0,
        Some(l) if now >= l => now - l,
        Some(_) => now,
    }
}

impl Remote {
    /// Folds one round of the other nodes' publications in.
    pub fn absorb(&mut self, round: &[(String, Published)]) {
        self.in_flight.clear();
        for (node, p) in round {
            for (tg, targets) in &p.targets {
                for (addr, t) in targets {
                    let Ok(sa) = addr.parse::<SocketAddr>() else { continue };
                    let key = (node.clone(), tg.clone(), addr.clone());
                    let grew = growth(self.last.get(&key).copied(), t.requests);
                    self.last.insert(key, t.requests);
                    *self.requests.entry((tg.clone(), sa)).or_default() += grew;
                    *self.in_flight.entry((tg.clone(), sa)).or_default() += t.in_flight;
                    for (class, n) in t.classes.iter().enumerate() {
                        let key = (node.clone(), tg.clone(), addr.clone(), class);
                        let grew = growth(self.last_class.get(&key).copied(), *n);
                        self.last_class.insert(key, *n);
                        *self.classes.entry((tg.clone(), class)).or_default() += grew;
                    }
                }
            }
            for (tg, buckets) in &p.latency {
                for (idx, count) in buckets {
                    let key = (node.clone(), tg.clone(), *idx);
                    let grew = growth(self.last_latency.get(&key).copied(), *count);
                    self.last_latency.insert(key, *count);
                    *self.latency.entry(tg.clone()).or_default().entry(*idx).or_default() += grew;
                }
            }
        }
    }
}

fn local_copy(p: &Published) -> Published {
    Published { targets: p.targets.clone(), latency: p.latency.clone() }
}

/// A quantile of the latency observed between two cumulative snapshots, interpolated inside the
/// bucket it falls in (buckets are ~3 % wide).
pub fn quantile(older: &Buckets, newer: &Buckets, q: f64) -> Option<f64> {
    let deltas: Vec<(u32, u64)> = newer
        .iter()
        .map(|(i, n)| (*i, n.saturating_sub(older.get(i).copied().unwrap_or(0))))
        .filter(|(_, d)| *d > 0)
        .collect();
    let total: u64 = deltas.iter().map(|(_, d)| d).sum();
    if total == 0 {
        return None;
    }
    let target = q * total as f64;
    let mut cum = 0u64;
    for (i, d) in deltas {
        if (cum + d) as f64 >= target {
            let (lo, hi) = flotilla_edge::bucket_bounds(i as usize);
            return Some(lo + (hi - lo) * ((target - cum as f64) / d as f64));
        }
        cum += d;
    }
    None
}

pub struct ClusterStats {
    cluster: Arc<Cluster>,
    edge: Arc<Edge>,
    remote: Mutex<Remote>,
    /// This node's own publications folded the same way, so cluster totals stay monotonic when
    /// a local target goes away.
    own: Mutex<Remote>,
    /// (when, target group → merged cumulative buckets), newest last.
    history: Mutex<VecDeque<(Instant, HashMap<String, Buckets>)>>,
}

impl ClusterStats {
    pub fn start(cluster: Arc<Cluster>, edge: Arc<Edge>) -> Arc<Self> {
        let stats = Arc::new(ClusterStats {
            cluster,
            edge,
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

    fn local(&self) -> Published {
        let mut p = Published::default();
        for g in self.edge.target_groups() {
            let t = p.targets.entry(g.name.clone()).or_default();
            for target in g.targets {
                let stat =
                    TargetStat { requests: target.requests, in_flight: target.in_flight, classes: target.classes };
                t.insert(target.addr.to_string(), stat);
            }
        }
        p.latency = self.edge.latency_buckets().into_iter().collect();
        p
    }

    async fn tick(&self) {
        let local = self.local();
        if let Ok(json) = serde_json::to_string(&local) {
            if let Err(e) = self.cluster.publish_stats(json).await {
                tracing::debug!(error = %e, "cluster: cannot publish this node's aggregates");
            }
        }
        // Our own first sighting counts from zero too: joining never shows as a burst.
        self.own
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .absorb(&[(self.cluster.node().to_string(), local_copy(&local))]);
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
        quantile(older.get(group).unwrap_or(&empty), newest.get(group)?, q)
    }

    /// The cluster's request and latency series for the watch (not `/metrics`, which stays per
    /// node): `flotilla_cluster_http_requests_total{target_group,class}` and the classic
    /// `flotilla_cluster_http_request_duration_seconds` histogram, from every node's counts.
    /// `slos[].scope = "cluster"` reads them.
    pub fn exposition(&self) -> String {
        use std::fmt::Write as _;
        let (own, remote) =
            (self.own.lock().unwrap_or_else(|e| e.into_inner()), self.remote.lock().unwrap_or_else(|e| e.into_inner()));
        let mut classes: BTreeMap<(String, usize), u64> = BTreeMap::new();
        for (k, v) in own.classes.iter().chain(remote.classes.iter()) {
            *classes.entry(k.clone()).or_default() += v;
        }
        let mut latency: BTreeMap<String, Buckets> = BTreeMap::new();
        for (tg, b) in own.latency.iter().chain(remote.latency.iter()) {
            let m = latency.entry(tg.clone()).or_default();
            for (i, c) in b {
                *m.entry(*i).or_default() += c;
            }
        }
        let mut out = String::from("# TYPE flotilla_cluster_http_requests counter\n");
        for ((tg, class), n) in &classes {
            let _ = writeln!(
                out,
                "flotilla_cluster_http_requests_total{{target_group=\"{tg}\",class=\"{}xx\"}} {n}",
                class + 1
            );
        }
        out.push_str("# TYPE flotilla_cluster_http_request_duration_seconds histogram\n");
        let name = "flotilla_cluster_http_request_duration_seconds";
        for (tg, b) in &latency {
            let count: u64 = b.values().sum();
            for bound in flotilla_edge::LATENCY_BOUNDS {
                let cum: u64 = b
                    .iter()
                    .filter(|(i, _)| flotilla_edge::bucket_bounds(**i as usize).1 <= bound + 1e-9)
                    .map(|(_, c)| c)
                    .sum();
                let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\",target_group=\"{tg}\"}} {cum}");
            }
            let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\",target_group=\"{tg}\"}} {count}");
            let _ = writeln!(out, "{name}_count{{target_group=\"{tg}\"}} {count}");
        }
        out
    }

    fn remote_counts(&self, group: &str, addr: SocketAddr) -> (u64, u32) {
        let r = self.remote.lock().unwrap_or_else(|e| e.into_inner());
        let key = (group.to_string(), addr);
        (r.requests.get(&key).copied().unwrap_or(0), r.in_flight.get(&key).copied().unwrap_or(0))
    }
}

/// The fleet's view of targets with every node's requests added: what a leader scales on.
pub struct ClusterRegistrar {
    pub inner: Arc<dyn Registrar>,
    pub stats: Arc<ClusterStats>,
    /// Target groups of swarm groups: the only ones whose targets are the same on every node
    /// (a process or docker group's 127.0.0.1:port is another instance on each node).
    pub shared: std::collections::HashSet<String>,
}

impl Registrar for ClusterRegistrar {
    fn register(&self, target_group: &str, addr: SocketAddr, zone: Option<&str>) -> Result<(), String> {
        self.inner.register(target_group, addr, zone)
    }

    fn deregister(&self, target_group: &str, addr: SocketAddr) {
        self.inner.deregister(target_group, addr)
    }

    fn status(&self, target_group: &str, addr: SocketAddr) -> Option<TargetStatus> {
        let mut st = self.inner.status(target_group, addr)?;
        if !self.shared.contains(target_group) {
            return Some(st);
        }
        let (requests, in_flight) = self.stats.remote_counts(target_group, addr);
        st.requests += requests;
        st.in_flight += in_flight;
        Some(st)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published(addr: &str, requests: u64, buckets: &[(u32, u64)]) -> Published {
        let mut p = Published::default();
        let stat = TargetStat { requests, in_flight: 2, classes: [0, requests, 0, 0, 0] };
        p.targets.entry("web".into()).or_default().insert(addr.into(), stat);
        p.latency.insert("web".into(), buckets.to_vec());
        p
    }

    #[test]
    fn remote_totals_are_monotonic_across_joins_and_restarts() {
        let a = "127.0.0.1:9001";
        let sa: SocketAddr = a.parse().unwrap();
        let mut r = Remote::default();
        r.absorb(&[("b".into(), published(a, 100, &[(40, 10)]))]);
        assert_eq!(r.requests[&("web".into(), sa)], 0, "a node seen first counts from now on");
        r.absorb(&[("b".into(), published(a, 130, &[(40, 15)])), ("c".into(), published(a, 7, &[]))]);
        assert_eq!(r.requests[&("web".into(), sa)], 30);
        assert_eq!(r.in_flight[&("web".into(), sa)], 4, "in flight is the sum of the latest");
        // b restarted: its counter starts again at 5 — that is 5 more, not 125 fewer.
        r.absorb(&[("b".into(), published(a, 5, &[(40, 1)])), ("c".into(), published(a, 17, &[]))]);
        assert_eq!(r.requests[&("web".into(), sa)], 30 + 5 + 10);
        assert_eq!(r.latency["web"][&40], 5 + 1);
        assert_eq!(r.classes[&("web".to_string(), 1)], 45, "classes fold like requests");
    }

    #[test]
    fn quantiles_of_merged_buckets_are_exact_to_the_bucket() {
        let older: Buckets = [(100, 10)].into();
        // 90 new observations in bucket 100, 10 in bucket 200.
        let newer: Buckets = [(100, 100), (200, 10)].into();
        let (lo100, hi100) = flotilla_edge::bucket_bounds(100);
        let (lo200, hi200) = flotilla_edge::bucket_bounds(200);
        let p50 = quantile(&older, &newer, 0.5).unwrap();
        assert!(lo100 <= p50 && p50 < hi100, "{p50}");
        let p95 = quantile(&older, &newer, 0.95).unwrap();
        assert!(lo200 <= p95 && p95 <= hi200, "{p95}");
        assert_eq!(quantile(&newer, &newer, 0.95), None, "no traffic in the window");
    }
}

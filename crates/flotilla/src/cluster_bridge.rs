//! Where the edge and the fleet meet the cluster: the cluster applies other nodes' invalidations
//! to this node's edge, the edge asks the cluster for shared rate-limit decisions, the cluster's
//! traffic totals read this node's edge, and a swarm group's leader sees every node's requests.
//! None of these crates imports another.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use flotilla_cluster::stats::{BucketLayout, ClusterStats, LocalStats, Published, TargetStat};
use flotilla_cluster::{Applier, Cluster, Decision, InvalidationSpec};
use flotilla_edge::{Edge, SharedLimiter, SharedVerdict};
use flotilla_fleet::{Registrar, TargetStatus};

pub struct EdgeApplier(pub Arc<Edge>);

impl Applier for EdgeApplier {
    fn apply(&self, spec: &InvalidationSpec) {
        self.0.invalidate(spec.paths.clone(), spec.tags.clone(), spec.all);
    }
}

pub struct RedisLimits(pub Arc<Cluster>);

impl SharedLimiter for RedisLimits {
    fn check(
        &self,
        key: String,
        interval: Duration,
        burst: u32,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = SharedVerdict> + Send + '_>> {
        Box::pin(async move {
            match self.0.rate_check(&key, interval, burst).await {
                Decision::Allow => SharedVerdict::Allow,
                Decision::Deny { retry_after } => SharedVerdict::Deny { retry_after },
                Decision::Unavailable => SharedVerdict::Unavailable,
            }
        })
    }

    fn nodes(&self) -> usize {
        self.0.live_node_count()
    }
}

/// The edge's fine latency histogram, as the cluster's merged buckets are read.
pub const LATENCY_LAYOUT: BucketLayout =
    BucketLayout { bounds: flotilla_edge::bucket_bounds, classic: &flotilla_edge::LATENCY_BOUNDS };

/// This node's per-target counts and latency buckets, read from the edge for the cluster totals.
pub struct EdgeStats(pub Arc<Edge>);

impl LocalStats for EdgeStats {
    fn snapshot(&self) -> Published {
        let mut p = Published::default();
        for g in self.0.target_groups() {
            let t = p.targets.entry(g.name.clone()).or_default();
            for target in g.targets {
                let stat =
                    TargetStat { requests: target.requests, in_flight: target.in_flight, classes: target.classes };
                t.insert(target.addr.to_string(), stat);
            }
            // What the edge and its cache answered for the group counts in the cluster's totals
            // (what clients saw: an outage's 502s included), under a name no target has; no
            // fleet policy reads it (they ask for their own targets' addresses).
            let answered = std::array::from_fn(|i| g.edge_classes[i] + g.cache_classes[i]);
            t.insert("-".to_string(), TargetStat { requests: 0, in_flight: 0, classes: answered });
        }
        p.latency = self.0.latency_buckets().into_iter().collect();
        p
    }
}

/// The fleet's view of targets with every node's requests added: what a leader scales on.
pub struct ClusterRegistrar {
    pub inner: Arc<dyn Registrar>,
    pub stats: Arc<ClusterStats>,
    /// Target groups of swarm groups: the only ones whose targets are the same on every node
    /// (a process or docker group's 127.0.0.1:port is another instance on each node).
    pub shared: HashSet<String>,
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

/// A short hash of the parts of the config every node must agree on (routes, target groups,
/// cache behaviours, groups, images), so `GET /api/v1/cluster` can flag a node that runs
/// another configuration. Node-local parts (listen addresses, node name, disk paths) are left
/// out: they differ between nodes by design.
pub fn config_hash(cfg: &flotilla_config::Config) -> String {
    let shared = format!(
        "{:?}{:?}{:?}{:?}{:?}{:?}",
        cfg.routes,
        cfg.target_groups,
        cfg.cache_behaviors,
        cfg.groups,
        cfg.images,
        cfg.cluster.as_ref().map(|c| (&c.prefix, &c.secret))
    );
    let digest = ring::digest::digest(&ring::digest::SHA256, shared.as_bytes());
    digest.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Leadership of swarm groups' control loops, and the state a new leader carries on from.
pub struct FleetCoordinator(pub Arc<Cluster>);

fn state_key(group: &str) -> String {
    format!("group:{group}:state")
}

impl flotilla_fleet::Coordinator for FleetCoordinator {
    fn leadership(&self, group: &str) -> tokio::sync::watch::Receiver<Option<u64>> {
        self.0.lead(&format!("group:{group}"))
    }

    fn load(&self, group: &str) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<String>> + Send + '_>> {
        let key = state_key(group);
        Box::pin(async move { self.0.get_state(&key).await.ok().flatten() })
    }

    fn save(
        &self,
        group: &str,
        token: u64,
        state: String,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<bool, String>> + Send + '_>> {
        let (lease, key) = (format!("group:{group}"), state_key(group));
        Box::pin(async move { self.0.fenced_set(&lease, token, &key, &state).await.map_err(|e| e.to_string()) })
    }
}

/// Nodes of one cluster lead each other's swarm groups, so they must label services alike: a
/// node whose `fleet.deployment` differs from a live node's would neither adopt nor clean up
/// the services the other launched. Refused when this node runs swarm groups; a warning
/// otherwise. With Redis unreachable there is nothing to compare (the API flags it later).
pub async fn check_deployment(
    cfg: &flotilla_config::Config,
    cluster: &flotilla_cluster::Cluster,
) -> anyhow::Result<()> {
    let Ok(nodes) = cluster.fetch_nodes().await else { return Ok(()) };
    let mine = &cfg.fleet.deployment;
    let Some(other) =
        nodes.iter().find(|n| n.name != cluster.node() && !n.deployment.is_empty() && n.deployment != *mine)
    else {
        return Ok(());
    };
    let swarm = cfg
        .groups
        .values()
        .any(|g| matches!(&g.launch.driver, flotilla_config::LaunchDriver::Docker { swarm: Some(_), .. }));
    let msg = format!(
        "fleet.deployment is {mine:?} here but {:?} on node {:?}: nodes of one cluster must agree (set [fleet] deployment to the same value on every node)",
        other.deployment, other.name
    );
    if swarm {
        anyhow::bail!(msg);
    }
    tracing::warn!("{msg}");
    Ok(())
}

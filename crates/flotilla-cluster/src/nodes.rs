//! Membership: each node writes `<prefix>:node:<name>` (a JSON description with a TTL of three
//! heartbeats) and adds its name to the `<prefix>:nodes` set. A node is live while its key
//! exists, so one that is killed, paused or cut off drops out by itself and nobody waits for it.

use std::sync::RwLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use crate::{backoff, within, Cluster, ClusterError, CONTROL_TIMEOUT};

/// One node as the others see it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeInfo {
    pub name: String,
    pub address: String,
    pub version: String,
    pub config_hash: String,
    /// Unix milliseconds of the node's last heartbeat.
    pub heartbeat_ms: u64,
    /// Unix milliseconds when the node started.
    pub started_ms: u64,
    /// Id of the last invalidation this node applied (`0-0`: none yet).
    pub applied: String,
    /// Control loops this node leads.
    #[serde(default)]
    pub leads: Vec<String>,
    /// Whether Redis answered this node's last heartbeat (always true in Redis' copy; the
    /// local copy says false when this node is cut off).
    #[serde(default = "yes")]
    pub connected: bool,
    /// The node process's run id (random per start): two processes under one name differ here.
    #[serde(default)]
    pub run: String,
    /// The node's `fleet.deployment`.
    #[serde(default)]
    pub deployment: String,
}

fn yes() -> bool {
    true
}

/// The last member list this node read, refreshed every heartbeat.
#[derive(Default)]
pub(crate) struct Live {
    pub list: RwLock<Vec<NodeInfo>>,
    /// How many nodes were live when Redis last answered: while cut off, a node cannot count
    /// its peers, so it keeps assuming the last count it saw (for rate-limit shares). The
    /// highest count of the last `COUNT_MEMORY`: a peer whose heartbeat came late (a busy
    /// host) must not double this node's share of a limit.
    pub last_count: std::sync::atomic::AtomicUsize,
    /// When `last_count` was last raised or confirmed (Unix ms).
    pub last_count_at: std::sync::atomic::AtomicU64,
}

/// How long a higher node count outlives a lower one (for rate-limit shares).
const COUNT_MEMORY: u64 = 10_000;

impl Live {
    /// Records a fresh count of live nodes: it replaces the remembered one if it is as high, or
    /// once the remembered one is older than `COUNT_MEMORY` (a node really left).
    fn note_count(&self, n: usize, now: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        if n >= self.last_count.load(Relaxed) || now.saturating_sub(self.last_count_at.load(Relaxed)) > COUNT_MEMORY {
            self.last_count.store(n, Relaxed);
            self.last_count_at.store(now, Relaxed);
        }
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Cluster {
    pub(crate) fn describe(&self, started_ms: u64) -> NodeInfo {
        NodeInfo {
            name: self.cfg.node.clone(),
            address: self.identity.address.clone(),
            version: self.identity.version.clone(),
            config_hash: self.identity.config_hash.clone(),
            heartbeat_ms: now_ms(),
            started_ms,
            applied: self.invalidations.applied().to_string(),
            leads: self.leases.leading(),
            connected: true,
            run: self.run.clone(),
            deployment: self.identity.deployment.clone(),
        }
    }

    /// Every live node, read from Redis now (this node's own entry included).
    pub async fn fetch_nodes(&self) -> Result<Vec<NodeInfo>, ClusterError> {
        let mut conn = self.conn.clone();
        let fetch = async {
            let names: Vec<String> = conn.smembers(&self.keys.nodes).await?;
            if names.is_empty() {
                return Ok::<_, redis::RedisError>(Vec::new());
            }
            let keys: Vec<String> = names.iter().map(|n| format!("{}{n}", self.keys.node_prefix)).collect();
            let values: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
            let mut live = Vec::new();
            let mut gone = Vec::new();
            for (name, v) in names.iter().zip(values) {
                match v.and_then(|v| serde_json::from_str::<NodeInfo>(&v).ok()) {
                    Some(n) => live.push(n),
                    None => gone.push(name.clone()),
                }
            }
            if !gone.is_empty() {
                // Forget nodes whose heartbeat expired; one that comes back re-adds itself.
                let _: Result<(), _> = conn.srem(&self.keys.nodes, &gone).await;
            }
            live.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(live)
        };
        match tokio::time::timeout(CONTROL_TIMEOUT, fetch).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(ClusterError::Timeout(CONTROL_TIMEOUT)),
        }
    }

    /// The member list as of the last heartbeat; this node itself is always in it (marked
    /// disconnected when Redis does not answer), so a cut-off node still describes itself.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        self.nodes.list.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Names of the nodes whose heartbeat is current.
    pub(crate) fn live_names(&self) -> Vec<String> {
        self.nodes.list.read().unwrap_or_else(|e| e.into_inner()).iter().map(|n| n.name.clone()).collect()
    }

    pub fn redis_up(&self) -> bool {
        self.metrics.redis_up.get() == 1
    }
}

pub(crate) async fn heartbeat_loop(cluster: std::sync::Arc<Cluster>) {
    let started = cluster.started_ms;
    let ttl = cluster.cfg.heartbeat * 3;
    let mut failures = 0u32;
    loop {
        let me = cluster.describe(started);
        let ok = beat(&cluster, &me, ttl).await;
        match ok {
            Ok(mut list) => {
                if failures > 0 {
                    tracing::info!("cluster: Redis is reachable again");
                }
                failures = 0;
                cluster.metrics.redis_up.set(1);
                if !list.iter().any(|n| n.run == me.run) {
                    list.push(me);
                }
                cluster.metrics.nodes.set(list.len() as i64);
                cluster.nodes.note_count(list.len(), now_ms());
                *cluster.nodes.list.write().unwrap_or_else(|e| e.into_inner()) = list;
            }
            Err(e) => {
                if failures == 0 {
                    tracing::warn!(error = %e, "cluster: Redis unreachable; serving with local state, retrying");
                }
                failures = failures.saturating_add(1);
                cluster.metrics.redis_up.set(0);
                // Cut off: the others will forget this node; it only knows about itself.
                *cluster.nodes.list.write().unwrap_or_else(|e| e.into_inner()) =
                    vec![NodeInfo { connected: false, ..me }];
                cluster.metrics.nodes.set(1);
            }
        }
        tokio::time::sleep(if failures > 0 {
            backoff(failures).min(cluster.cfg.heartbeat)
        } else {
            cluster.cfg.heartbeat
        })
        .await;
    }
}

/// One heartbeat: a compare-and-set of this node's key (see `name.rs`), then the member list.
async fn beat(cluster: &Cluster, me: &NodeInfo, ttl: Duration) -> Result<Vec<NodeInfo>, ClusterError> {
    let holder = cluster.claim(me, ttl).await?;
    cluster.note_claim(holder.as_ref().map(|(h, _)| h));
    cluster.fetch_nodes().await
}

impl Cluster {
    /// What `GET /api/v1/cluster` shows: every live node, with the last invalidation it applied
    /// (from its ack key, fresher than its heartbeat) and how long the oldest invalidation it
    /// has not applied has been waiting; nodes whose config differs from this one's flagged.
    /// Without Redis, this node alone.
    pub async fn status(&self) -> serde_json::Value {
        let (nodes, redis_error) = match self.fetch_nodes().await {
            Ok(n) => (n, None),
            Err(e) => (self.nodes(), Some(self.cfg.redis.scrub(e.to_string()))),
        };
        let head = self.stream_head().await;
        let now = now_ms();
        let mut rows = Vec::new();
        for n in &nodes {
            let applied = self.acked(&n.name).await.max(crate::StreamId::parse(&n.applied).unwrap_or_default());
            let behind = head.is_some_and(|h| applied < h);
            let lag_ms = match behind {
                true => self.oldest_after(applied).await.map_or(0, |id| now.saturating_sub(id.ms)),
                false => 0,
            };
            rows.push(serde_json::json!({
                "name": n.name,
                "address": n.address,
                "version": n.version,
                "config_hash": n.config_hash,
                "config_differs": n.config_hash != self.identity.config_hash,
                "deployment": n.deployment,
                "deployment_differs": n.deployment != self.identity.deployment,
                "started_ms": n.started_ms,
                "last_heartbeat_ms": n.heartbeat_ms,
                "heartbeat_age_ms": now.saturating_sub(n.heartbeat_ms),
                "applied": applied.to_string(),
                "behind": behind,
                "lag_ms": lag_ms,
                "leads": n.leads,
                "connected": n.connected,
                "this": n.run == self.run,
            }));
        }
        serde_json::json!({
            "node": self.cfg.node,
            // Another process runs under this node's name: this one leads nothing meanwhile.
            "name_conflict": !self.holds_name(),
            "redis": { "url": self.cfg.redis.url, "up": redis_error.is_none(), "error": redis_error },
            "stream_head": head.map(|h| h.to_string()),
            "invalidations_journaled": self.invalidations.journal_len(),
            "nodes": rows,
        })
    }

    /// The last id `node` acknowledged (its ack key), or zero.
    async fn acked(&self, node: &str) -> crate::StreamId {
        let mut conn = self.conn.clone();
        let key = format!("{}{node}", self.keys.ack_prefix);
        let v: Option<String> = within(redis::cmd("GET").arg(key).query_async(&mut conn)).await.ok().flatten();
        v.as_deref().and_then(crate::StreamId::parse).unwrap_or_default()
    }

    /// The first invalidation after `id` (the oldest one a node at `id` has not applied).
    async fn oldest_after(&self, id: crate::StreamId) -> Option<crate::StreamId> {
        let mut conn = self.conn.clone();
        let next: Vec<(String, Vec<(String, String)>)> = within(
            redis::cmd("XRANGE")
                .arg(&self.keys.invalidations)
                .arg(format!("({id}"))
                .arg("+")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut conn),
        )
        .await
        .ok()?;
        next.first().and_then(|(id, _)| crate::StreamId::parse(id))
    }

    /// The id of the newest invalidation in the stream, if Redis answers and there is one.
    async fn stream_head(&self) -> Option<crate::StreamId> {
        let mut conn = self.conn.clone();
        let last: Vec<(String, Vec<(String, String)>)> = within(
            redis::cmd("XREVRANGE")
                .arg(&self.keys.invalidations)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut conn),
        )
        .await
        .ok()?;
        last.first().and_then(|(id, _)| crate::StreamId::parse(id))
    }
}

impl Cluster {
    /// Publishes this node's per-period aggregates (opaque JSON for the caller) with a TTL, so
    /// a node that stops stops counting.
    pub async fn publish_stats(&self, json: String) -> Result<(), ClusterError> {
        if !self.holds_name() {
            return Ok(()); // the name's holder publishes under it, not this run
        }
        let mut conn = self.conn.clone();
        let ttl = (self.cfg.heartbeat * 3).max(std::time::Duration::from_secs(3));
        let key = format!("{}:stats:{}", self.cfg.prefix, self.cfg.node);
        within(redis::cmd("SET").arg(key).arg(json).arg("PX").arg(ttl.as_millis() as u64).query_async::<()>(&mut conn))
            .await
    }

    /// The other live nodes' latest aggregates, as (node, JSON).
    pub async fn read_stats(&self) -> Result<Vec<(String, String)>, ClusterError> {
        let others: Vec<String> = self.live_names().into_iter().filter(|n| *n != self.cfg.node).collect();
        if others.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = others.iter().map(|n| format!("{}:stats:{n}", self.cfg.prefix)).collect();
        let mut conn = self.conn.clone();
        let values: Vec<Option<String>> = within(redis::cmd("MGET").arg(&keys).query_async(&mut conn)).await?;
        Ok(others.into_iter().zip(values).filter_map(|(n, v)| Some((n, v?))).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::Relaxed;

    #[test]
    fn a_late_heartbeat_does_not_lower_the_count_but_a_departure_does() {
        let live = Live::default();
        live.note_count(3, 1_000);
        // A peer missed a heartbeat: still three for rate-limit shares.
        live.note_count(2, 2_000);
        assert_eq!(live.last_count.load(Relaxed), 3);
        live.note_count(3, 5_000);
        // Gone for longer than the memory: two it is.
        live.note_count(2, 16_000);
        assert_eq!(live.last_count.load(Relaxed), 2);
        live.note_count(4, 16_500);
        assert_eq!(live.last_count.load(Relaxed), 4);
    }
}

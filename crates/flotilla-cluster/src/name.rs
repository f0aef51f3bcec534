//! One name, one node. Everything a node does in Redis is keyed by `cluster.node` (its
//! heartbeat, acknowledgements, statistics, the leases it holds), so two processes running
//! under one name would each believe the other's writes were their own: both renewed the same
//! leases and led the same groups. Each process therefore has a run id, random per start, and
//! holds its name only while the heartbeat key carries that id:
//!
//! - at start, a name whose key carries another run is refused once that key's heartbeat moves
//!   (a live node); a key that stops moving (this node's own previous run, crashed) expires
//!   after three heartbeats and is taken over;
//! - every heartbeat is a compare-and-set, so a node that finds its name taken at run time
//!   (it started while Redis was unreachable, or was cut off long enough for another to claim
//!   the name) says so loudly and stops leading, acknowledging and publishing under the name
//!   until it is free again;
//! - leases name the holder's run, not only its name, so two runs can never hold one.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::nodes::{now_ms, NodeInfo};
use crate::{within, Cluster, ClusterError};

/// Sets the node key to ARGV[1] (with a TTL of ARGV[3] ms) and adds ARGV[4] to the member set,
/// unless the key holds another run's description: then returns it and its remaining TTL.
const CLAIM: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, held = pcall(cjson.decode, cur)
  if ok and type(held) == 'table' and type(held.run) == 'string' and held.run ~= '' and held.run ~= ARGV[2] then
    return {cur, redis.call('PTTL', KEYS[1])}
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
redis.call('SADD', KEYS[2], ARGV[4])
return false
"#;

/// Deletes the node key and leaves the member set only if the key is this run's.
const LEAVE: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, held = pcall(cjson.decode, cur)
  if ok and type(held) == 'table' and held.run ~= nil and held.run ~= ARGV[1] then return 0 end
  redis.call('DEL', KEYS[1])
end
redis.call('SREM', KEYS[2], ARGV[2])
return 1
"#;

/// The longest a starting node waits to learn whether the name's holder is alive: three of the
/// longest heartbeat allowed.
const MAX_CLAIM_WAIT: Duration = Duration::from_secs(180);

/// A fresh run id: random, so a restarted process is a new run.
pub(crate) fn new_run_id() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let mixed = fastrand::u64(..) ^ nanos.rotate_left(17) ^ u64::from(std::process::id()).rotate_left(41);
    format!("{mixed:016x}{:08x}", fastrand::u32(..))
}

impl Cluster {
    fn node_key(&self) -> String {
        format!("{}{}", self.keys.node_prefix, self.cfg.node)
    }

    /// Writes this node's heartbeat if the name is free or already this run's. `Ok(None)`: held;
    /// `Ok(Some((holder, ttl)))`: another run holds it.
    pub(crate) async fn claim(&self, me: &NodeInfo, ttl: Duration) -> Result<Option<(NodeInfo, i64)>, ClusterError> {
        let mut conn = self.conn.clone();
        let json = serde_json::to_string(me).unwrap_or_default();
        let script = redis::Script::new(CLAIM);
        let mut call = script.key(self.node_key());
        call.key(&self.keys.nodes).arg(json).arg(&self.run).arg(ttl.as_millis() as u64).arg(&self.cfg.node);
        let held: Option<(String, i64)> = within(call.invoke_async(&mut conn)).await?;
        Ok(held.map(|(json, pttl)| {
            // A description that does not parse still names another run (the script checked).
            let info = serde_json::from_str::<NodeInfo>(&json).unwrap_or_else(|_| NodeInfo {
                name: self.cfg.node.clone(),
                address: "?".into(),
                version: String::new(),
                config_hash: String::new(),
                heartbeat_ms: 0,
                started_ms: 0,
                applied: String::new(),
                leads: Vec::new(),
                connected: true,
                run: "?".into(),
                deployment: String::new(),
            });
            (info, pttl)
        }))
    }

    /// Takes `cluster.node` before the node does anything under it; refuses when a live node
    /// holds it. With Redis unreachable it cannot tell and lets the node start (the heartbeat
    /// checks as soon as Redis answers).
    pub(crate) async fn claim_at_start(&self, started_ms: u64) -> Result<(), ClusterError> {
        let ttl = self.cfg.heartbeat * 3;
        let began = Instant::now();
        let mut first: Option<u64> = None;
        loop {
            let me = self.describe(started_ms);
            let (holder, pttl) = match self.claim(&me, ttl).await {
                Ok(None) => return Ok(()),
                Ok(Some(h)) => h,
                Err(e) => {
                    tracing::warn!(error = %e, node = %self.cfg.node, "cluster: could not check that no other node runs under this name (Redis unreachable); the heartbeat checks once Redis answers");
                    return Ok(());
                }
            };
            let taken = || ClusterError::NameTaken {
                node: self.cfg.node.clone(),
                address: holder.address.clone(),
                age_ms: now_ms().saturating_sub(holder.heartbeat_ms),
            };
            match first {
                Some(beat) if beat != holder.heartbeat_ms => return Err(taken()),
                Some(_) => {}
                None => {
                    first = Some(holder.heartbeat_ms);
                    tracing::info!(node = %self.cfg.node, holder = %holder.address, "cluster: another run holds this node's name; waiting to see whether it is alive (a crashed run's key expires after three heartbeats)");
                }
            }
            // A key without expiry, or one still there after the longest TTL, is kept alive by
            // someone: refuse rather than wait for ever.
            if pttl < 0 || began.elapsed() > MAX_CLAIM_WAIT {
                return Err(taken());
            }
            let pause =
                Duration::from_millis(pttl as u64 + 50).min(self.cfg.heartbeat / 2).max(Duration::from_millis(50));
            tokio::time::sleep(pause).await;
        }
    }

    /// Notes the heartbeat's outcome: whether this run holds its name. Says so loudly once
    /// when it changes.
    pub(crate) fn note_claim(&self, holder: Option<&NodeInfo>) {
        match holder {
            Some(h) => {
                if !self.name_lost.swap(true, Ordering::AcqRel) {
                    tracing::error!(
                        node = %self.cfg.node,
                        other = %h.address,
                        "cluster: another live node runs under this node's name (cluster.node); this node steps down from every lease and stops acknowledging and publishing under the name until it is free again. Give each node its own cluster.node"
                    );
                    self.metrics.name_conflict.set(1);
                }
            }
            None => {
                if self.name_lost.swap(false, Ordering::AcqRel) {
                    tracing::warn!(node = %self.cfg.node, "cluster: this node's name is free again; this node holds it");
                    self.metrics.name_conflict.set(0);
                }
            }
        }
    }

    /// False while another run holds this node's name: nothing may be written under it then.
    pub fn holds_name(&self) -> bool {
        !self.name_lost.load(Ordering::Acquire)
    }

    /// Who holds a lease: the name and this run, so two runs never share one.
    pub(crate) fn lease_holder(&self) -> String {
        format!("{}/{}", self.cfg.node, self.run)
    }

    /// Removes this node from the member list, unless another run holds the name now.
    pub(crate) async fn leave(&self) {
        let mut conn = self.conn.clone();
        let script = redis::Script::new(LEAVE);
        let mut call = script.key(self.node_key());
        call.key(&self.keys.nodes).arg(&self.run).arg(&self.cfg.node);
        let _ = within(call.invoke_async::<i64>(&mut conn)).await;
    }
}

//! One leader per control loop: a Redis lease with a fencing token.
//!
//! `<prefix>:lease:<loop>` holds `"<node>/<run> <token>"` (the run: see `name.rs`) with a TTL of `cluster.lease`; the holder
//! renews it every fifth of the lease (Kubernetes renews a 15 s lease every 2 s). Each new holder
//! gets a higher token from `<prefix>:lease:<loop>:token`, so a write tagged with a deposed
//! leader's token is refused wherever the token is checked ([`Cluster::fenced_set`]). A node
//! also gives up leadership by itself once `lease` has passed since its last successful renewal
//! (measured on its own monotonic clock, started before the renewal was sent), so a leader cut
//! off from Redis stops acting before another node can have taken over.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::{within, Cluster, ClusterError};

const ACQUIRE: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur then
  local node, token = string.match(cur, '^(%S+) (%d+)$')
  if node == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return tonumber(token)
  end
  return -1
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. token, 'PX', ARGV[2])
return token
"#;

const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// Sets KEYS[2] to ARGV[2] only while KEYS[1] (the lease) still names ARGV[1] (node and token).
const FENCED_SET: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2])
return 1
"#;

/// Leases this node takes part in: loop name → the token while it leads.
#[derive(Default)]
pub(crate) struct Leases {
    held: Mutex<BTreeMap<String, watch::Sender<Option<u64>>>>,
}

impl Leases {
    pub(crate) fn leading(&self) -> Vec<String> {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.iter().filter(|(_, tx)| tx.borrow().is_some()).map(|(name, _)| name.clone()).collect()
    }
}

impl Cluster {
    fn lease_key(&self, name: &str) -> String {
        format!("{}:lease:{name}", self.cfg.prefix)
    }

    /// Takes part in the election for `name`: the receiver holds `Some(token)` while this node
    /// leads it and `None` otherwise. Idempotent per name.
    pub fn lead(self: &Arc<Self>, name: &str) -> watch::Receiver<Option<u64>> {
        let mut held = self.leases.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = held.get(name) {
            return tx.subscribe();
        }
        let (tx, rx) = watch::channel(None);
        held.insert(name.to_string(), tx.clone());
        drop(held);
        let task = tokio::spawn(lease_loop(self.clone(), name.to_string(), tx));
        self.tasks.lock().unwrap_or_else(|e| e.into_inner()).push(task);
        rx
    }

    /// Writes `value` at `key` (under the prefix) only if `token` still leads `name`: a deposed
    /// leader's late write is refused. `Ok(false)` when refused.
    pub async fn fenced_set(&self, name: &str, token: u64, key: &str, value: &str) -> Result<bool, ClusterError> {
        let mut conn = self.conn.clone();
        let script = redis::Script::new(FENCED_SET);
        let mut call = script.key(self.lease_key(name));
        call.key(format!("{}:{key}", self.cfg.prefix)).arg(format!("{} {token}", self.lease_holder())).arg(value);
        let done: i64 = within(call.invoke_async(&mut conn)).await?;
        Ok(done == 1)
    }

    /// Reads `key` (under the prefix), e.g. state a previous leader saved with `fenced_set`.
    pub async fn get_state(&self, key: &str) -> Result<Option<String>, ClusterError> {
        let mut conn = self.conn.clone();
        within(redis::cmd("GET").arg(format!("{}:{key}", self.cfg.prefix)).query_async(&mut conn)).await
    }

    async fn try_acquire(&self, name: &str) -> Result<Option<u64>, ClusterError> {
        let mut conn = self.conn.clone();
        let script = redis::Script::new(ACQUIRE);
        let mut call = script.key(self.lease_key(name));
        call.key(format!("{}:token", self.lease_key(name)))
            .arg(self.lease_holder())
            .arg(self.cfg.lease.as_millis() as u64);
        let token: i64 = within(call.invoke_async(&mut conn)).await?;
        Ok((token > 0).then_some(token as u64))
    }

    /// Gives a held lease up at once (clean shutdown), so the next leader need not wait it out.
    pub(crate) async fn release_all(&self) {
        let held: Vec<(String, Option<u64>)> = {
            let held = self.leases.held.lock().unwrap_or_else(|e| e.into_inner());
            held.iter().map(|(n, tx)| (n.clone(), *tx.borrow())).collect()
        };
        for (name, token) in held {
            if let Some(token) = token {
                self.release(&name, token).await;
            }
        }
    }

    /// Gives up one lease if this run still holds it under `token`.
    async fn release(&self, name: &str, token: u64) {
        let mut conn = self.conn.clone();
        let script = redis::Script::new(RELEASE);
        let mut call = script.key(self.lease_key(name));
        call.arg(format!("{} {token}", self.lease_holder()));
        let _ = within(call.invoke_async::<i64>(&mut conn)).await;
    }
}

async fn lease_loop(cluster: Arc<Cluster>, name: String, tx: watch::Sender<Option<u64>>) {
    let lease = cluster.cfg.lease;
    let renew = (lease / 5).max(Duration::from_millis(100));
    // While leading: the instant after which this node must assume it no longer leads.
    let mut valid_until: Option<Instant> = None;
    loop {
        if !cluster.holds_name() {
            // Another process runs under this node's name: lead nothing rather than share.
            let held = *tx.borrow();
            if let Some(token) = held {
                tracing::warn!(lease = %name, "cluster: stepping down: another node runs under this node's name");
                cluster.release(&name, token).await;
            }
            valid_until = None;
            tx.send_replace(None);
            tokio::time::sleep(renew).await;
            continue;
        }
        let sent = Instant::now();
        match cluster.try_acquire(&name).await {
            Ok(Some(token)) => {
                valid_until = Some(sent + lease - renew);
                if *tx.borrow() != Some(token) {
                    tracing::info!(lease = %name, token, "cluster: now leading");
                    tx.send_replace(Some(token));
                }
            }
            Ok(None) => {
                if tx.borrow().is_some() {
                    tracing::warn!(lease = %name, "cluster: another node leads now; stepping down");
                }
                valid_until = None;
                tx.send_replace(None);
            }
            Err(e) => {
                // Keep leading only while the last renewal is surely still in force.
                if valid_until.is_some_and(|v| Instant::now() >= v) {
                    tracing::warn!(lease = %name, error = %e, "cluster: cannot renew the lease; pausing this loop");
                    valid_until = None;
                    tx.send_replace(None);
                }
            }
        }
        let pause = match valid_until {
            Some(v) => renew.min(v.saturating_duration_since(Instant::now())),
            None => renew,
        };
        tokio::time::sleep(pause.max(Duration::from_millis(50))).await;
        if valid_until.is_some_and(|v| Instant::now() >= v) && tx.borrow().is_some() {
            tracing::warn!(lease = %name, "cluster: lease not renewed in time; pausing this loop");
            valid_until = None;
            tx.send_replace(None);
        }
    }
}

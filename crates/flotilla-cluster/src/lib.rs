//! Several Flotilla nodes sharing edge state through Redis.
//!
//! A node with `[cluster]` starts a [`Cluster`]: it announces itself with a heartbeat (a key
//! with a TTL, so a node that stops is forgotten by itself), publishes cache invalidations to a
//! Redis Stream and applies every other node's, acknowledging each, and answers the data path's
//! rate-limit questions with one atomic Lua call. Redis is never on the path of a request for
//! longer than `cluster.timeout`, and nothing here fails a request when Redis is down: the node
//! keeps its own state, journals what it could not publish and catches up when Redis returns.
//!
//! Each node also publishes its traffic counts every second and folds the others' into
//! cluster totals ([`stats::ClusterStats`]) that swarm groups' policies scale on.
//!
//! The edge does not import this crate (the binary bridges them), so everything the edge must
//! do is behind [`Applier`], and what the cluster totals read from it behind
//! [`stats::LocalStats`].

mod id;
mod invalidations;
mod lease;
mod limiter;
mod metrics;
mod name;
mod nodes;
pub mod stats;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use flotilla_config::ClusterConfig;

pub use id::StreamId;
pub use invalidations::{InvalidationSpec, Outcome};
pub use limiter::Decision;
pub use nodes::NodeInfo;

/// What a node does when another node's invalidation arrives (the binary applies it to the edge).
pub trait Applier: Send + Sync + 'static {
    fn apply(&self, spec: &InvalidationSpec);
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster.redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("cluster state in {path}: {source}")]
    State { path: PathBuf, source: std::io::Error },
    #[error("cluster.node {node:?} is already used by a live node (its admin API: {address}, last heartbeat {age_ms} ms ago); every node needs its own name: set another cluster.node on this one")]
    NameTaken { node: String, address: String, age_ms: u64 },
}

/// What this node tells the others about itself.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Where this node's admin API listens (what `GET /api/v1/cluster` shows as its address).
    pub address: String,
    pub version: String,
    /// A hash of the config file, so nodes running a different config are flagged.
    pub config_hash: String,
    /// `fleet.deployment`: nodes of one cluster must agree on it (swarm services carry it).
    pub deployment: String,
}

/// Redis key names, all under the configured prefix.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    pub nodes: String,
    pub node_prefix: String,
    pub invalidations: String,
    pub acks: String,
    pub ack_prefix: String,
    pub limit_prefix: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        Keys {
            nodes: format!("{prefix}:nodes"),
            node_prefix: format!("{prefix}:node:"),
            invalidations: format!("{prefix}:invalidations"),
            acks: format!("{prefix}:acks"),
            ack_prefix: format!("{prefix}:ack:"),
            limit_prefix: format!("{prefix}:rl:"),
        }
    }
}

/// Reconnect pacing shared by the loops: quick at first, never hammering a Redis that is down.
pub(crate) fn backoff(attempt: u32) -> Duration {
    let ms = 50u64.saturating_mul(1 << attempt.min(6)).min(2_000);
    Duration::from_millis(ms + fastrand::u64(0..=ms / 4))
}

/// One node's membership in the cluster. Cheap to share; its loops stop when it is dropped
/// through [`Cluster::stop`].
pub struct Cluster {
    pub(crate) cfg: ClusterConfig,
    pub(crate) keys: Keys,
    pub(crate) identity: Identity,
    /// Commands that may wait up to a second (heartbeats, publishing, listing nodes).
    pub(crate) conn: redis::aio::ConnectionManager,
    pub(crate) client: redis::Client,
    pub(crate) metrics: metrics::Metrics,
    pub(crate) invalidations: invalidations::State,
    pub(crate) limiter: limiter::Limiter,
    pub(crate) nodes: nodes::Live,
    pub(crate) leases: lease::Leases,
    /// This process's run id (random per start): what makes its name and leases its own.
    pub(crate) run: String,
    /// When this process joined (Unix ms), as its heartbeat says.
    pub(crate) started_ms: u64,
    /// Set while another run holds this node's name (see `name.rs`).
    pub(crate) name_lost: std::sync::atomic::AtomicBool,
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// How long control-plane commands (not the data path) may take before counting as a failure.
pub(crate) const CONTROL_TIMEOUT: Duration = Duration::from_secs(1);

/// A control-plane Redis call, bounded by [`CONTROL_TIMEOUT`].
pub(crate) async fn within<T>(
    call: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, ClusterError> {
    match tokio::time::timeout(CONTROL_TIMEOUT, call).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(ClusterError::Timeout(CONTROL_TIMEOUT)),
    }
}

impl Cluster {
    /// Joins the cluster. `state_dir` (the disk cache's directory) keeps the id of the last
    /// invalidation applied and the journal of those not yet published, so a restarted node
    /// replays what it missed; without a disk cache a restart starts empty and needs neither.
    ///
    /// Waits (at most `catch_up`) until invalidations missed while this node was down are
    /// applied, so it serves nothing stale once it starts listening. Redis being down is not an
    /// error: the loops keep retrying and the node serves with what it has.
    pub async fn start(
        cfg: &ClusterConfig,
        identity: Identity,
        state_dir: Option<PathBuf>,
        applier: Arc<dyn Applier>,
        catch_up: Duration,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let client = redis::Client::open(cfg.redis.connection_url())?;
        let control = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONTROL_TIMEOUT))
            .set_response_timeout(Some(CONTROL_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = client.get_connection_manager_lazy(control)?;
        let limiter = limiter::Limiter::new(&client, cfg)?;
        let keys = Keys::new(&cfg.prefix);
        let invalidations = invalidations::State::load(state_dir, applier)?;
        let cluster = Arc::new(Cluster {
            cfg: cfg.clone(),
            keys,
            identity,
            conn,
            client,
            metrics: metrics::Metrics::default(),
            invalidations,
            limiter,
            nodes: nodes::Live::default(),
            leases: lease::Leases::default(),
            run: name::new_run_id(),
            started_ms: nodes::now_ms(),
            name_lost: std::sync::atomic::AtomicBool::new(false),
            tasks: std::sync::Mutex::new(Vec::new()),
        });
        // Before anything is written under the name: refuse to be a second node "a".
        cluster.claim_at_start(cluster.started_ms).await?;
        let mut synced = cluster.invalidations.synced.subscribe();
        let mut tasks = vec![
            tokio::spawn(nodes::heartbeat_loop(cluster.clone())),
            tokio::spawn(invalidations::apply_loop(cluster.clone())),
            tokio::spawn(invalidations::ack_loop(cluster.clone())),
        ];
        tasks.push(tokio::spawn(invalidations::journal_loop(cluster.clone())));
        *cluster.tasks.lock().unwrap_or_else(|e| e.into_inner()) = tasks;
        if tokio::time::timeout(catch_up, synced.wait_for(|s| *s)).await.is_err() {
            tracing::warn!(
                wait = ?catch_up,
                "cluster: could not catch up on invalidations before serving (Redis unreachable?); serving with the local cache and catching up in the background"
            );
        }
        Ok(cluster)
    }

    pub fn node(&self) -> &str {
        &self.cfg.node
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.cfg
    }

    /// Stops the loops and removes this node from the member list (its keys expire anyway).
    pub async fn stop(&self) {
        self.release_all().await;
        for t in self.tasks.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            t.abort();
        }
        self.leave().await;
    }

    /// Prometheus text for `/metrics`.
    pub fn encode_metrics(&self) -> String {
        self.metrics.encode(self)
    }
}

//! The cluster-wide rate limit: GCRA kept in Redis, one atomic round trip per decision (a Lua
//! script that reads Redis's clock, so nodes' clocks need not agree).
//!
//! The data path waits at most `cluster.timeout`. When Redis fails or is slow the caller decides
//! locally with a per-node share of the limit (`Decision::Unavailable`), and this node stops
//! asking Redis for a second so a dead Redis costs requests nothing — the fail-open behaviour
//! Traefik's users ask for, with a log line and a metric.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::{Cluster, ClusterError};

const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new = tat + interval
local wait = new - now
if wait > tolerance then return wait - tolerance end
redis.call('SET', KEYS[1], string.format('%d', new), 'PX', math.floor(wait / 1000) + 1)
return 0
"#;

/// How long the limiter leaves Redis alone after a failure before trying again.
const PAUSE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny {
        retry_after: Duration,
    },
    /// Redis did not answer in time (or is paused after failing): decide locally.
    Unavailable,
}

pub(crate) struct Limiter {
    conn: redis::aio::ConnectionManager,
    script: redis::Script,
    timeout: Duration,
    epoch: Instant,
    /// Milliseconds since `epoch` before which Redis is not asked.
    paused_until: AtomicU64,
    failing: AtomicBool,
}

impl Limiter {
    pub(crate) fn new(client: &redis::Client, cfg: &flotilla_config::ClusterConfig) -> Result<Self, ClusterError> {
        let mc = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.timeout.max(Duration::from_millis(100))))
            .set_response_timeout(Some(cfg.timeout))
            .set_number_of_retries(0);
        Ok(Limiter {
            conn: client.get_connection_manager_lazy(mc)?,
            script: redis::Script::new(GCRA),
            timeout: cfg.timeout,
            epoch: Instant::now(),
            paused_until: AtomicU64::new(0),
            failing: AtomicBool::new(false),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

impl Cluster {
    /// One GCRA decision on the shared bucket `key`: `interval` between requests, `burst` extra.
    pub async fn rate_check(&self, key: &str, interval: Duration, burst: u32) -> Decision {
        let l = &self.limiter;
        if l.now_ms() < l.paused_until.load(Ordering::Relaxed) {
            self.metrics.ratelimit_fallbacks.inc();
            return Decision::Unavailable;
        }
        let interval_us = (interval.as_micros() as u64).max(1);
        let tolerance_us = interval_us.saturating_mul(u64::from(burst));
        let mut conn = l.conn.clone();
        let mut call = l.script.key(format!("{}{key}", self.keys.limit_prefix));
        call.arg(interval_us).arg(tolerance_us);
        let answer = tokio::time::timeout(l.timeout, call.invoke_async::<i64>(&mut conn)).await;
        match answer {
            Ok(Ok(wait_us)) => {
                if l.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("cluster: rate limits are shared through Redis again");
                }
                self.metrics.ratelimit_decisions.inc();
                if wait_us > 0 {
                    Decision::Deny { retry_after: Duration::from_micros(wait_us as u64) }
                } else {
                    Decision::Allow
                }
            }
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {:?}", l.timeout),
                };
                if !l.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %why, "cluster: rate limits fall back to this node's share while Redis fails");
                }
                l.paused_until.store(l.now_ms() + PAUSE.as_millis() as u64, Ordering::Relaxed);
                self.metrics.ratelimit_fallbacks.inc();
                Decision::Unavailable
            }
        }
    }

    /// How many nodes share a limit when each must enforce its own share (at least 1): the
    /// count from when Redis last answered.
    pub fn live_node_count(&self) -> usize {
        self.nodes.last_count.load(Ordering::Relaxed).max(1)
    }
}

//! A container instance as the reconcile loop sees it, whichever container driver runs it
//! ([`crate::docker`] or [`crate::swarm`]): the handle the loop holds, the slots the driver's
//! task fills in (id, exit, usage, address), the launch spec, and the one CPU/memory sample
//! both drivers take from `docker stats`.
//!
//! The work happens in the driver's task; the loop only reads slots and asks it to stop, so
//! nothing here blocks the loop.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::engine::Engine;

/// What to start.
pub struct Spec {
    pub name: String,
    pub image: String,
    pub command: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub container_port: u16,
    pub host_port: u16,
    pub cpus: Option<f64>,
    pub memory: Option<u64>,
    pub stop_timeout: Duration,
    pub stats_every: Duration,
}

/// A container instance as the reconcile loop sees it; the work happens in its driver's task.
pub struct Container {
    shared: Arc<Shared>,
}

#[derive(Default)]
pub(crate) struct Shared {
    pub id: Mutex<Option<String>>,
    pub exit: Mutex<Option<String>>,
    pub stopping: AtomicBool,
    /// Let go without stopping (a Swarm service handed to another leader).
    pub detached: AtomicBool,
    pub stop: Notify,
    /// Latest (cpu % of one core, memory bytes).
    pub usage: Mutex<Option<(Option<f64>, u64)>>,
    /// Where a Swarm task answers (its node's address and the host port Swarm published),
    /// once it runs; plain containers are reached where they were launched.
    pub addr: Mutex<Option<std::net::SocketAddr>>,
}

impl Shared {
    /// Waits one poll interval, or less if a stop is requested; true once stopping.
    pub(crate) async fn wait_tick(&self, poll: Duration) -> bool {
        if !self.stopping.load(Ordering::Acquire) {
            tokio::select! {
                _ = self.stop.notified() => {}
                _ = tokio::time::sleep(poll) => {}
            }
        }
        self.stopping.load(Ordering::Acquire)
    }
}

impl Container {
    /// A handle and the slots its driver's task fills in.
    pub(crate) fn new() -> (Self, Arc<Shared>) {
        let shared = Arc::new(Shared::default());
        (Self { shared: shared.clone() }, shared)
    }

    /// Lets go of the instance without stopping it (another node leads its group now).
    pub(crate) fn detach(&self) {
        self.shared.detached.store(true, Ordering::Release);
        self.terminate();
    }

    /// Why it ended, once it has (and, after a stop, once it is removed).
    pub fn exited(&self) -> Option<String> {
        self.shared.exit.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stop (Docker sends SIGTERM, then SIGKILL after the stop timeout) and remove.
    pub fn terminate(&self) {
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.stop.notify_one();
    }

    pub fn usage(&self) -> Option<(Option<f64>, u64)> {
        *self.shared.usage.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn id(&self) -> Option<String> {
        self.shared.id.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A Swarm task's address, once Swarm has placed it and published its port.
    pub fn addr(&self) -> Option<std::net::SocketAddr> {
        *self.shared.addr.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub(crate) fn set(slot: &Mutex<Option<String>>, v: String) {
    *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(v);
}

/// The cumulative CPU counters of one `docker stats` answer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuSample {
    /// When the answer arrived here: the fallback clock when the daemon gives no host total.
    at: Instant,
    /// The container's CPU time, ns.
    total: u64,
    /// The host's CPU time over all cores, ns, read by the daemon together with `total`.
    system: Option<u64>,
    online_cpus: u64,
}

impl CpuSample {
    fn from_stats(s: &serde_json::Value, at: Instant) -> Self {
        let c = &s["cpu_stats"];
        Self {
            at,
            total: c["cpu_usage"]["total_usage"].as_u64().unwrap_or(0),
            system: c["system_cpu_usage"].as_u64().filter(|&v| v > 0),
            online_cpus: c["online_cpus"].as_u64().filter(|&n| n > 0).unwrap_or(1),
        }
    }

    /// CPU % of one core between two samples, as `docker stats` computes it: the container's
    /// share of the host's CPU time times the number of CPUs. Both counters come from the same
    /// read in the daemon, so a slow answer cannot skew the interval; timing the answers here
    /// did (one slow `stats` call on a loaded host read as 266 % and scaled a group out). The
    /// arrival clock is used only when the daemon reports no host total.
    fn percent_since(&self, prev: &CpuSample) -> Option<f64> {
        let used = self.total.checked_sub(prev.total)? as f64;
        let pct = match (self.system, prev.system) {
            (Some(now), Some(then)) if now > then => used / (now - then) as f64 * self.online_cpus as f64 * 100.0,
            _ => {
                let wall = self.at.checked_duration_since(prev.at)?.as_secs_f64();
                if wall <= 0.0 {
                    return None;
                }
                used / 1e9 / wall * 100.0
            }
        };
        Some(pct.min(self.online_cpus as f64 * 100.0))
    }
}

/// One stats sample: (cpu % of one core since the previous sample, memory bytes).
pub(crate) async fn sample_stats(
    engine: &Engine,
    id: &str,
    last_cpu: &mut Option<CpuSample>,
) -> Option<(Option<f64>, u64)> {
    let s = engine.call("GET", &format!("/containers/{id}/stats?stream=false&one-shot=true"), None).await.ok()?;
    let mem = s["memory_stats"]["usage"].as_u64().unwrap_or(0);
    let sample = CpuSample::from_stats(&s, Instant::now());
    let cpu = last_cpu.as_ref().and_then(|prev| sample.percent_since(prev));
    *last_cpu = Some(sample);
    Some((cpu, mem))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stats(total: u64, system: Option<u64>) -> serde_json::Value {
        json!({ "cpu_stats": { "cpu_usage": { "total_usage": total }, "system_cpu_usage": system, "online_cpus": 2 } })
    }

    #[test]
    fn cpu_percent_uses_the_daemons_counters_not_answer_arrival() {
        let t0 = Instant::now();
        let prev = CpuSample::from_stats(&stats(1_000_000_000, Some(10_000_000_000)), t0);
        // Half a second of container CPU over 2 s of host CPU time (two cores: 1 s of wall
        // clock): 50 % of one core, however late or early the answers arrived.
        let late = CpuSample::from_stats(&stats(1_500_000_000, Some(12_000_000_000)), t0 + Duration::from_millis(100));
        assert_eq!(late.percent_since(&prev), Some(50.0));
    }

    #[test]
    fn cpu_percent_falls_back_to_arrival_time_and_is_capped_at_every_core() {
        let t0 = Instant::now();
        let prev = CpuSample::from_stats(&stats(0, None), t0);
        let cur = CpuSample::from_stats(&stats(250_000_000, None), t0 + Duration::from_secs(1));
        assert_eq!(cur.percent_since(&prev), Some(25.0));
        let burst = CpuSample::from_stats(&stats(5_000_000_000, None), t0 + Duration::from_secs(1));
        assert_eq!(burst.percent_since(&prev), Some(200.0));
        // A counter that went backwards (a restarted container) gives no sample.
        assert_eq!(prev.percent_since(&cur), None);
    }
}

//! A target group: its targets, balancing, stickiness and the ALB-style target lifecycle
//! (initial → healthy ⇄ unhealthy, → draining → removed).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use flotilla_config::{Algorithm, TargetConfig, TargetGroupConfig};
use prometheus_client::metrics::counter::Counter;

use crate::balance::{self, Candidate};
use crate::health;
use crate::metrics::{EdgeMetrics, GroupLabels};
use crate::target::{Target, TargetSource, TargetState};
use crate::EdgeError;

pub struct TargetGroup {
    pub name: String,
    cfg: ArcSwap<TargetGroupConfig>,
    targets: ArcSwap<Vec<Arc<Target>>>,
    /// Serializes writers (register, deregister, reload); readers never take it.
    write: Mutex<()>,
    rr: AtomicUsize,
    edge_zone: Option<String>,
    metrics: Arc<EdgeMetrics>,
    client: health::Client,
    pub(crate) duration: Arc<crate::latency::LatencyHistogram>,
    pub(crate) retries: Counter,
    fail_open: Counter,
    pub(crate) ejections: Counter,
    /// Answers the edge itself and the cache gave for this group, by class (see
    /// `metrics::Source`); the targets count theirs.
    pub(crate) answered: [[Counter; 5]; 2],
    last_fail_open_log: AtomicU64,
    started: Instant,
}

/// What the request path asks for when picking.
pub(crate) struct PickRequest<'a> {
    pub sticky: Option<&'a str>,
    pub hash_key: Option<&'a [u8]>,
    /// Targets already tried for this request (retries go elsewhere).
    pub exclude: &'a [SocketAddr],
}

impl TargetGroup {
    pub(crate) fn new(
        cfg: TargetGroupConfig,
        edge_zone: Option<String>,
        metrics: Arc<EdgeMetrics>,
        client: health::Client,
    ) -> Arc<Self> {
        let labels = GroupLabels { target_group: cfg.name.clone() };
        let duration = metrics.latency.get_or_create(&cfg.name);
        let retries = metrics.retries.get_or_create(&labels).clone();
        let fail_open = metrics.fail_open.get_or_create(&labels).clone();
        let ejections = metrics.ejections.get_or_create(&labels).clone();
        let answered = metrics.group_counters(&cfg.name);
        let group = Arc::new(Self {
            answered,
            name: cfg.name.clone(),
            duration,
            retries,
            fail_open,
            ejections,
            cfg: ArcSwap::from_pointee(cfg.clone()),
            targets: ArcSwap::from_pointee(Vec::new()),
            write: Mutex::new(()),
            rr: AtomicUsize::new(0),
            edge_zone,
            metrics,
            client,
            last_fail_open_log: AtomicU64::new(0),
            started: Instant::now(),
        });
        for t in &cfg.targets {
            group.add(t, TargetSource::Config);
        }
        group
    }

    pub fn config(&self) -> Arc<TargetGroupConfig> {
        self.cfg.load_full()
    }

    pub fn targets(&self) -> Arc<Vec<Arc<Target>>> {
        self.targets.load_full()
    }

    /// Applies a reloaded config: new settings, config targets added or drained to match.
    pub(crate) fn reconfigure(self: &Arc<Self>, cfg: TargetGroupConfig) {
        self.cfg.store(Arc::new(cfg.clone()));
        for t in self.targets().iter() {
            if let Some(c) = cfg.targets.iter().find(|c| c.addr == t.addr) {
                t.set_weight(c.weight);
            } else if t.source == TargetSource::Config {
                self.drain(t.addr);
            }
        }
        for c in &cfg.targets {
            self.add(c, TargetSource::Config);
        }
    }

    /// Registers a target. It starts `initial` (or `healthy` when checks are off). Registering an
    /// address that is already present updates its weight; a draining one is replaced.
    pub(crate) fn add(self: &Arc<Self>, t: &TargetConfig, source: TargetSource) -> bool {
        let _w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.targets.load_full();
        if let Some(existing) = current.iter().find(|x| x.addr == t.addr && x.state() != TargetState::Draining) {
            existing.set_weight(t.weight);
            return false;
        }
        let cfg = self.cfg.load();
        let initial = if cfg.health_check.enabled { TargetState::Initial } else { TargetState::Healthy };
        let counters = self.metrics.target_counters(&self.name, &t.addr.to_string());
        let mut target = Target::new(t.addr, t.zone.clone(), t.weight, source, initial, counters);
        target.id = crate::target::sticky_id(t.addr, cfg.stickiness.secret.as_deref());
        let target = Arc::new(target);
        let mut next: Vec<_> = current.iter().filter(|x| x.addr != t.addr).cloned().collect();
        for old in current.iter().filter(|x| x.addr == t.addr) {
            old.removed.store(true, Ordering::Release);
        }
        next.push(target.clone());
        self.targets.store(Arc::new(next));
        if cfg.health_check.enabled {
            health::spawn(self.clone(), target);
        }
        tracing::info!(target_group = %self.name, target = %t.addr, state = initial.as_str(), "target registered");
        true
    }

    /// Deregisters: the target gets no new requests; it is removed once its in-flight requests
    /// finish or the deregistration delay runs out, whichever comes first.
    pub(crate) fn drain(self: &Arc<Self>, addr: SocketAddr) -> bool {
        let Some(t) = self.targets().iter().find(|t| t.addr == addr && t.state() != TargetState::Draining).cloned()
        else {
            return false;
        };
        t.transition(TargetState::Draining);
        let delay = self.cfg.load().deregistration_delay;
        tracing::info!(target_group = %self.name, target = %addr, delay = ?delay, "target draining");
        let group = self.clone();
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + delay;
            while t.outstanding() > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            group.remove(&t);
            tracing::info!(target_group = %group.name, target = %t.addr, in_flight = t.outstanding(), "target removed");
        });
        true
    }

    fn remove(&self, t: &Arc<Target>) {
        let _w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        t.removed.store(true, Ordering::Release);
        let next: Vec<_> = self.targets.load().iter().filter(|x| !Arc::ptr_eq(x, t)).cloned().collect();
        // Re-registered at the same address meanwhile: the series are the new target's too.
        if !next.iter().any(|x| x.addr == t.addr) {
            self.metrics.forget_target(&self.name, &t.addr.to_string());
        }
        self.targets.store(Arc::new(next));
    }

    /// Picks a target for one request attempt, or `None` when nothing can take it.
    pub(crate) fn pick(&self, req: &PickRequest<'_>) -> Option<Arc<Target>> {
        let targets = self.targets.load();
        let cfg = self.cfg.load();
        if let Some(id) = req.sticky {
            if let Some(t) = targets.iter().find(|t| t.id == id) {
                if t.state() == TargetState::Healthy && !req.exclude.contains(&t.addr) {
                    return Some(t.clone());
                }
            }
        }
        // Only slow start needs the clock; skip the read otherwise.
        let now = if cfg.slow_start.is_zero() { self.started } else { Instant::now() };
        let eligible = |want: TargetState, t: &Arc<Target>| t.state() == want && !req.exclude.contains(&t.addr);
        let mut cands: Vec<Candidate<'_>> = Vec::with_capacity(targets.len());
        let mut in_zone = 0;
        for t in targets.iter().filter(|t| eligible(TargetState::Healthy, t)) {
            let local = self.edge_zone.is_some() && t.zone == self.edge_zone;
            cands.push(Candidate { target: t, weight: t.effective_weight(cfg.slow_start, now) });
            if local {
                // Keep same-zone candidates at the front.
                let last = cands.len() - 1;
                cands.swap(in_zone, last);
                in_zone += 1;
            }
        }
        if in_zone > 0 {
            cands.truncate(in_zone);
        }
        if cands.is_empty() {
            // Fail open: with no healthy target, trying an unhealthy one beats a certain 503.
            for t in targets.iter().filter(|t| {
                (eligible(TargetState::Unhealthy, t) || eligible(TargetState::Initial, t))
                    && !t.removed.load(Ordering::Relaxed)
            }) {
                cands.push(Candidate { target: t, weight: u64::from(t.weight()) * 1000 });
            }
            if cands.is_empty() {
                return None;
            }
            self.fail_open.inc();
            self.log_fail_open();
        }
        let key = match cfg.algorithm {
            Algorithm::HashHeader | Algorithm::HashIp => req.hash_key,
            _ => None,
        };
        let i = balance::pick(cfg.algorithm, &cands, &self.rr, key);
        Some(cands[i].target.clone())
    }

    /// At most one warning per 10 s, so a total outage does not flood the log.
    fn log_fail_open(&self) {
        let now = self.started.elapsed().as_secs();
        let last = self.last_fail_open_log.load(Ordering::Relaxed);
        if (last == 0 || now >= last + 10)
            && self.last_fail_open_log.compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            tracing::warn!(target_group = %self.name, "no healthy target: failing open to unhealthy targets");
        }
    }

    /// Passive health: a failed connect. Ejects after the configured streak.
    pub(crate) fn report_connect_failure(&self, t: &Target) {
        let limit = self.cfg.load().passive.consecutive_connect_failures;
        let n = t.connect_fail_streak.fetch_add(1, Ordering::Relaxed) + 1;
        if limit > 0 && n >= limit {
            self.eject(t, "connect failure");
        }
    }

    /// Passive health: a response arrived. 5xx streaks eject; anything else resets streaks.
    pub(crate) fn report_response(&self, t: &Target, status: u16) {
        t.connect_fail_streak.store(0, Ordering::Relaxed);
        if status >= 500 {
            let limit = self.cfg.load().passive.consecutive_5xx;
            let n = t.status_5xx_streak.fetch_add(1, Ordering::Relaxed) + 1;
            if limit > 0 && n >= limit {
                self.eject(t, "consecutive 5xx");
            }
        } else if t.status_5xx_streak.load(Ordering::Relaxed) != 0 {
            t.status_5xx_streak.store(0, Ordering::Relaxed);
        }
    }

    fn eject(&self, t: &Target, reason: &str) {
        if !self.cfg.load().health_check.enabled {
            // Without active checks nothing would bring it back; passive ejection needs them.
            return;
        }
        if t.transition(TargetState::Unhealthy) == Some(TargetState::Healthy) {
            t.ok_streak.store(0, Ordering::Relaxed);
            t.connect_fail_streak.store(0, Ordering::Relaxed);
            t.status_5xx_streak.store(0, Ordering::Relaxed);
            self.ejections.inc();
            tracing::warn!(target_group = %self.name, target = %t.addr, reason, "target ejected by passive health check");
        }
    }

    pub(crate) fn health_client(&self) -> &health::Client {
        &self.client
    }
}

impl std::fmt::Debug for TargetGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetGroup").field("name", &self.name).finish_non_exhaustive()
    }
}

pub(crate) fn not_found(name: &str) -> EdgeError {
    EdgeError::UnknownTargetGroup(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_config::{HealthCheck, Passive, Stickiness};

    fn group(zone: Option<&str>, targets: &[(&str, Option<&str>)]) -> Arc<TargetGroup> {
        let cfg = TargetGroupConfig {
            name: "g".into(),
            targets: targets
                .iter()
                .map(|(a, z)| TargetConfig { addr: a.parse().unwrap(), zone: z.map(String::from), weight: 1 })
                .collect(),
            algorithm: Algorithm::RoundRobin,
            hash_header: None,
            deregistration_delay: Duration::from_secs(1),
            slow_start: Duration::ZERO,
            stickiness: Stickiness {
                enabled: false,
                cookie: "c".into(),
                duration: Duration::from_secs(1),
                secret: None,
            },
            retries: 2,
            // Checks off: targets start healthy and no task is spawned (no runtime needed).
            health_check: HealthCheck {
                enabled: false,
                path: "/".into(),
                interval: Duration::from_secs(1),
                timeout: Duration::from_secs(1),
                healthy_threshold: 1,
                unhealthy_threshold: 1,
                matcher: vec![(200, 399)],
            },
            passive: Passive { consecutive_5xx: 5, consecutive_connect_failures: 1 },
        };
        TargetGroup::new(cfg, zone.map(String::from), Arc::new(EdgeMetrics::new()), health::client())
    }

    fn picks(g: &TargetGroup, n: usize) -> std::collections::BTreeMap<SocketAddr, usize> {
        let mut m = std::collections::BTreeMap::new();
        for _ in 0..n {
            let t = g.pick(&PickRequest { sticky: None, hash_key: None, exclude: &[] }).unwrap();
            *m.entry(t.addr).or_default() += 1;
        }
        m
    }

    #[test]
    fn a_removed_target_leaves_no_series_behind() {
        let g = group(None, &[("127.0.0.1:1", None), ("127.0.0.1:2", None)]);
        let series = |g: &TargetGroup| {
            g.metrics
                .requests
                .get_or_create(&crate::metrics::RequestLabels {
                    target_group: "g".into(),
                    target: "127.0.0.1:1".into(),
                    class: "2xx",
                    source: "target",
                })
                .get()
        };
        g.targets()[0].by_class[1].inc();
        assert_eq!(series(&g), 1);
        let first = g.targets()[0].clone();
        g.remove(&first);
        // Gone: asking again creates a fresh series at zero.
        assert_eq!(series(&g), 0);
    }

    #[test]
    fn same_zone_targets_are_preferred_and_others_take_over_when_they_fail() {
        let g = group(Some("a"), &[("127.0.0.1:1", Some("a")), ("127.0.0.1:2", Some("b")), ("127.0.0.1:3", Some("a"))]);
        let m = picks(&g, 100);
        assert_eq!(m.len(), 2, "only zone a while it is healthy: {m:?}");
        assert!(!m.contains_key(&"127.0.0.1:2".parse().unwrap()));
        for t in g.targets().iter().filter(|t| t.zone.as_deref() == Some("a")) {
            t.transition(TargetState::Unhealthy);
        }
        let m = picks(&g, 10);
        assert_eq!(m.get(&"127.0.0.1:2".parse().unwrap()), Some(&10), "spill over to zone b: {m:?}");
    }

    #[test]
    fn retries_exclude_tried_targets_and_draining_targets_get_nothing() {
        let g = group(None, &[("127.0.0.1:1", None), ("127.0.0.1:2", None)]);
        let first: SocketAddr = "127.0.0.1:1".parse().unwrap();
        for _ in 0..10 {
            let t = g.pick(&PickRequest { sticky: None, hash_key: None, exclude: &[first] }).unwrap();
            assert_ne!(t.addr, first);
        }
        g.targets()[1].transition(TargetState::Draining);
        assert!(g.pick(&PickRequest { sticky: None, hash_key: None, exclude: &[first] }).is_none());
        assert_eq!(picks(&g, 5).get(&first), Some(&5));
    }

    #[test]
    fn fail_open_uses_unhealthy_targets_but_never_draining_ones() {
        let g = group(None, &[("127.0.0.1:1", None), ("127.0.0.1:2", None)]);
        g.targets()[0].transition(TargetState::Unhealthy);
        g.targets()[1].transition(TargetState::Draining);
        let m = picks(&g, 5);
        assert_eq!(m.get(&"127.0.0.1:1".parse().unwrap()), Some(&5), "{m:?}");
    }
}

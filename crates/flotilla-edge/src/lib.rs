//! Flotilla's data path: an L7 load balancer in the mould of AWS ALB and HAProxy.
//!
//! [`Edge`] owns the listeners and a swappable [`Runtime`] (routes, target groups, limits) that a
//! reload replaces atomically; requests already running keep the snapshot they started with.
//! The edge knows nothing of the fleet: targets arrive from config or from [`Edge::register`].

mod backend;
mod balance;
mod body;
mod cached;
mod context;
mod error;
mod fdlimit;
mod files;
mod forwarding;
mod framing;
mod group;
mod headers;
mod health;
mod image_route;
mod images;
mod latency;
mod listener;
pub mod managed;
pub mod metrics;
mod path;
mod policy;
mod pool;
mod prefixed;
mod proxy;
mod proxy_protocol;
mod route;
mod shield;
mod streams;
mod target;
mod tls;
mod upgrade;
mod upstream;
mod worker;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use flotilla_config::{Config, Limits, TargetConfig, Timeouts};
use http::header::HeaderName;
use tokio::sync::{mpsc, watch, Semaphore};

pub use body::Body;
pub use cached::Invalidation;
pub use error::EdgeError;
pub use fdlimit::raise_nofile;
pub use latency::{bucket_bounds, CLASSIC as LATENCY_BOUNDS};
pub use policy::{SharedLimiter, SharedVerdict};
pub use target::TargetState;

use group::TargetGroup;
use metrics::{EdgeMetrics, StateLabels};
use target::TargetSource;

/// Everything a request needs that a reload may change, swapped as one unit.
pub(crate) struct Runtime {
    routes: route::Routes,
    groups: HashMap<String, Arc<TargetGroup>>,
    /// Set when plain listeners should answer 301 to this HTTPS port.
    https_redirect: Option<u16>,
    request_id_header: HeaderName,
    access_log: bool,
    timeouts: Timeouts,
    limits: Limits,
    /// `[images]`, when configured.
    images: Option<Arc<images::ImageService>>,
    /// The cache parent's target group (`cache.parent`), when configured.
    shield: Option<Arc<TargetGroup>>,
    /// `cache.parent_timeout`: how long a miss waits for the parent's response head.
    cache_parent_timeout: Duration,
    /// `edge.trusted_proxies`: peers whose forwarding and PROXY headers are believed.
    trusted_proxies: Vec<flotilla_config::Cidr>,
    /// `edge.proxy_protocol`: every connection starts with a PROXY header.
    proxy_protocol: bool,
    /// `edge.escaped_slashes`.
    escaped_slashes: flotilla_config::EscapedSlashes,
}

pub(crate) struct Shared {
    runtime: ArcSwap<Runtime>,
    metrics: Arc<EdgeMetrics>,
    cache: cached::EdgeCache,
    connect_timeout: Duration,
    health_client: health::Client,
    tls: ArcSwapOption<tokio_rustls::TlsAcceptor>,
    /// Certificates and challenge answers installed at run time (ACME); survives reloads.
    managed: Arc<managed::ManagedTls>,
    /// hyper's HTTP/1.1 and HTTP/2 server settings (head timeout, size limits); replaced on
    /// reload, read once per new connection.
    server_builders: ArcSwap<listener::ServerBuilders>,
    conn_limit: Arc<Semaphore>,
    per_ip: Arc<listener::PerIp>,
    image_pool: images::Pool,
    /// Cluster-wide rate-limit buckets (Redis), when the node is part of a cluster.
    shared_limiter: std::sync::OnceLock<Arc<dyn policy::SharedLimiter>>,

    zone: Option<String>,
}

/// A running (or ready to run) edge node.
pub struct Edge {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    listen: Vec<SocketAddr>,
    tls_listen: Vec<SocketAddr>,
    bound: Mutex<Vec<SocketAddr>>,
    /// Every worker thread holds a clone; shutdown drops this one and waits for the rest.
    alive_tx: Mutex<Option<mpsc::Sender<()>>>,
    alive_rx: tokio::sync::Mutex<Option<mpsc::Receiver<()>>>,
    workers: usize,
}

/// A target as the admin API shows it.
#[derive(Debug, Clone)]
pub struct TargetView {
    pub addr: SocketAddr,
    pub zone: Option<String>,
    pub weight: u32,
    pub state: TargetState,
    pub in_flight: u32,
    pub requests: u64,
    /// The target's own responses by status class, 1xx to 5xx (`source="target"`).
    pub classes: [u64; 5],
}

#[derive(Debug, Clone)]
pub struct GroupView {
    pub name: String,
    pub algorithm: String,
    pub targets: Vec<TargetView>,
    /// Answers the edge itself gave for this group (502/503/504, refusals) and answers from the
    /// cache, by status class: with the targets' own, what clients saw.
    pub edge_classes: [u64; 5],
    pub cache_classes: [u64; 5],
}

fn target_view(t: &target::Target) -> TargetView {
    TargetView {
        addr: t.addr,
        zone: t.zone.clone(),
        weight: t.weight(),
        state: t.state(),
        in_flight: t.outstanding(),
        requests: t.requests(),
        classes: std::array::from_fn(|i| t.by_class[i].get()),
    }
}

impl Edge {
    /// Builds the edge from a validated config (loads TLS material; binds nothing yet).
    pub fn new(cfg: &Config) -> Result<Self, EdgeError> {
        let metrics = Arc::new(EdgeMetrics::new());
        let managed = Arc::new(managed::ManagedTls::default());
        let tls = cfg.edge.tls.as_ref().map(|t| tls::acceptor(t, &managed)).transpose()?;
        let (alive_tx, alive_rx) = mpsc::channel(1);
        let shared = Arc::new(Shared {
            runtime: ArcSwap::from_pointee(Runtime::empty(cfg)),
            metrics,
            cache: cached::EdgeCache::new(&cfg.cache),
            connect_timeout: cfg.edge.timeouts.connect,
            health_client: health::client(),
            tls: ArcSwapOption::from(tls.map(Arc::new)),
            managed,
            server_builders: ArcSwap::from_pointee(listener::server_builders(&cfg.edge)),
            conn_limit: Arc::new(Semaphore::new(fdlimit::connection_cap(cfg.edge.limits.max_connections))),
            per_ip: Arc::new(listener::PerIp::default()),
            image_pool: images::Pool::new(cfg.images.as_ref()),
            shared_limiter: std::sync::OnceLock::new(),
            zone: cfg.edge.zone.clone(),
        });
        let (stop, _) = watch::channel(false);
        let edge = Self {
            shared,
            stop,
            listen: cfg.edge.listen.clone(),
            tls_listen: cfg.edge.tls.as_ref().map(|t| t.listen.clone()).unwrap_or_default(),
            bound: Mutex::new(Vec::new()),
            alive_tx: Mutex::new(Some(alive_tx)),
            alive_rx: tokio::sync::Mutex::new(Some(alive_rx)),
            workers: match cfg.edge.workers {
                0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                n => n,
            },
        };
        Ok(edge)
    }

    /// Each target group's fine latency buckets, sparse (see `latency::Latencies::sparse`).
    pub fn latency_buckets(&self) -> Vec<(String, Vec<(u32, u64)>)> {
        self.shared.metrics.latency.sparse()
    }

    /// Makes every route's rate limit cluster-wide (set once, before `start`).
    pub fn set_shared_limiter(&self, store: Arc<dyn SharedLimiter>) {
        if self.shared.shared_limiter.set(store).is_err() {
            tracing::warn!("shared rate limiter already set; keeping the first");
        }
    }

    /// Binds every listener and starts serving; returns the bound addresses (plain, then TLS).
    /// Must run inside a tokio runtime. Target groups and health checks start here too.
    pub fn start(&self, cfg: &Config) -> Result<Vec<SocketAddr>, EdgeError> {
        self.apply(cfg, &HashMap::new());
        let mut bound = Vec::new();
        let mut per_worker: Vec<Vec<(std::net::TcpListener, bool)>> = (0..self.workers).map(|_| Vec::new()).collect();
        for (addrs, tls) in [(&self.listen, false), (&self.tls_listen, true)] {
            for &addr in addrs {
                // The first bind resolves port 0; the other workers bind the port it got.
                let first = listener::bind(addr)?;
                let actual = first.local_addr().map_err(|source| EdgeError::Bind { addr, source })?;
                bound.push(actual);
                per_worker[0].push((first, tls));
                for listeners in per_worker.iter_mut().skip(1) {
                    listeners.push((listener::bind(actual)?, tls));
                }
            }
        }
        let alive = self.alive_tx.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(alive) = alive else { return Err(EdgeError::Stopped) };
        for (i, listeners) in per_worker.into_iter().enumerate() {
            worker::spawn(i, self.shared.clone(), listeners, self.stop.subscribe(), alive.clone())
                .map_err(|e| EdgeError::Worker(e.to_string()))?;
        }
        tracing::info!(listen = ?bound, workers = self.workers, "edge listening");
        *self.bound.lock().unwrap_or_else(|e| e.into_inner()) = bound.clone();
        Ok(bound)
    }

    /// Applies a new config without dropping requests: routes and groups swap atomically,
    /// targets keep their health state, removed config targets drain. Listener addresses are
    /// fixed for the life of the process (a change is logged and ignored).
    pub fn reload(&self, cfg: &Config) -> Result<(), EdgeError> {
        let tls = cfg.edge.tls.as_ref().map(|t| tls::acceptor(t, &self.shared.managed)).transpose()?;
        if cfg.edge.listen != self.listen
            || cfg.edge.tls.as_ref().map(|t| &t.listen).unwrap_or(&Vec::new()) != &self.tls_listen
        {
            tracing::warn!("listen addresses changed: they take effect only after a restart");
        }
        self.shared.tls.store(tls.map(Arc::new));
        // New connections get the new head timeout and size limits; open ones keep theirs.
        self.shared.server_builders.store(Arc::new(listener::server_builders(&cfg.edge)));
        let current = self.shared.runtime.load().groups.clone();
        self.apply(cfg, &current);
        tracing::info!(file = %cfg.source.display(), "configuration reloaded");
        Ok(())
    }

    fn apply(&self, cfg: &Config, current: &HashMap<String, Arc<TargetGroup>>) {
        let mut groups = HashMap::new();
        let mut configs = cfg.target_groups.clone();
        if let Some(parent) = cfg.cache.parent {
            configs.insert(flotilla_config::SHIELD_GROUP.into(), shield::group_config(parent));
        }
        for (name, gcfg) in &configs {
            let g = match current.get(name) {
                Some(g) => {
                    g.reconfigure(gcfg.clone());
                    g.clone()
                }
                None => TargetGroup::new(
                    gcfg.clone(),
                    self.shared.zone.clone(),
                    self.shared.metrics.clone(),
                    self.shared.health_client.clone(),
                ),
            };
            groups.insert(name.clone(), g);
        }
        for (name, g) in current {
            if !groups.contains_key(name) {
                for t in g.targets().iter() {
                    g.drain(t.addr);
                }
            }
        }
        let mut rt = Runtime::empty(cfg);
        rt.routes = route::Routes::new(&cfg.routes, &groups, &cfg.cache_behaviors, &self.shared.metrics);
        rt.images =
            cfg.images.as_ref().and_then(|i| images::ImageService::new(i, &groups, &self.shared.metrics)).map(Arc::new);
        rt.shield = groups.get(flotilla_config::SHIELD_GROUP).cloned();
        rt.groups = groups;
        self.shared.runtime.store(Arc::new(rt));
    }

    /// Stops accepting, lets in-flight requests finish (up to `timeouts.shutdown`), then returns.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        drop(self.alive_tx.lock().unwrap_or_else(|e| e.into_inner()).take());
        let Some(mut alive_rx) = self.alive_rx.lock().await.take() else { return };
        let limit = self.shared.runtime.load().timeouts.shutdown;
        tracing::info!(connections = self.shared.metrics.active_connections.get(), "draining client connections");
        // recv() yields None once every worker has drained its connections and exited.
        if tokio::time::timeout(limit, alive_rx.recv()).await.is_err() {
            tracing::warn!(after = ?limit, "shutdown timeout reached with connections still open");
        }
    }

    /// Where run-time certificates and ACME challenge answers go.
    pub fn managed_tls(&self) -> Arc<managed::ManagedTls> {
        self.shared.managed.clone()
    }

    pub fn bound_addrs(&self) -> Vec<SocketAddr> {
        self.bound.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn target_groups(&self) -> Vec<GroupView> {
        let rt = self.shared.runtime.load();
        let mut out: Vec<GroupView> = rt
            .groups
            .values()
            .map(|g| GroupView {
                name: g.name.clone(),
                algorithm: format!("{:?}", g.config().algorithm),
                targets: g.targets().iter().map(|t| target_view(t)).collect(),
                edge_classes: std::array::from_fn(|i| g.answered[0][i].get()),
                cache_classes: std::array::from_fn(|i| g.answered[1][i].get()),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// One target of a group (the current registration of that address), if present.
    pub fn target(&self, group: &str, addr: SocketAddr) -> Option<TargetView> {
        let g = self.shared.runtime.load().groups.get(group).cloned()?;
        let targets = g.targets();
        targets.iter().find(|t| t.addr == addr).map(|t| target_view(t))
    }

    /// Registers a target (the fleet and the admin API call this). Returns false if it was
    /// already registered (its weight is updated).
    pub fn register(&self, group: &str, target: TargetConfig) -> Result<bool, EdgeError> {
        let g = self.group(group)?;
        Ok(g.add(&target, TargetSource::Api))
    }

    /// Deregisters a target with draining.
    pub fn deregister(&self, group: &str, addr: SocketAddr) -> Result<(), EdgeError> {
        let g = self.group(group)?;
        if g.drain(addr) {
            Ok(())
        } else {
            Err(EdgeError::UnknownTarget { group: group.into(), addr })
        }
    }

    fn group(&self, name: &str) -> Result<Arc<TargetGroup>, EdgeError> {
        self.shared.runtime.load().groups.get(name).cloned().ok_or_else(|| group::not_found(name))
    }

    /// Invalidates cached responses by path (`/a.css`, `/img/*`), by tag, or all; in effect for
    /// every worker when this returns.
    pub fn invalidate(&self, paths: Vec<String>, tags: Vec<String>, all: bool) -> Invalidation {
        self.shared.metrics.cache_invalidations.inc();
        let record = self.shared.cache.invalidate(paths, tags, all);
        self.shared.metrics.cache_invalidation_seconds.inc_by(record.duration.as_secs_f64());
        tracing::info!(id = record.id, paths = ?record.paths, tags = ?record.tags, all, duration_us = record.duration.as_micros() as u64, "cache invalidated");
        record
    }

    pub fn invalidation(&self, id: u64) -> Option<Invalidation> {
        self.shared.cache.invalidation(id)
    }

    /// Prometheus text exposition of the edge's metrics.
    pub fn encode_metrics(&self) -> String {
        let rt = self.shared.runtime.load();
        let m = &self.shared.metrics;
        for g in rt.groups.values() {
            let mut counts = [0i64; 4];
            for t in g.targets().iter() {
                counts[t.state() as usize] += 1;
            }
            for (i, state) in ["initial", "healthy", "unhealthy", "draining"].into_iter().enumerate() {
                m.targets.get_or_create(&StateLabels { target_group: g.name.clone(), state }).set(counts[i]);
            }
        }
        let (entries, bytes) = self.shared.cache.store.usage();
        m.cache_entries.set(entries.min(i64::MAX as u64) as i64);
        m.cache_bytes.set(bytes.min(i64::MAX as u64) as i64);
        m.cache_fill_bytes.set(self.shared.cache.fill_budget.used().min(i64::MAX as usize) as i64);
        let evicted = self.shared.cache.store.evictions();
        m.cache_memory_evictions.inc_by(evicted.saturating_sub(m.cache_memory_evictions.get()));
        if let Some(disk) = &self.shared.cache.disk {
            let (objects, bytes) = disk.usage();
            m.cache_disk_objects.set(objects.min(i64::MAX as u64) as i64);
            m.cache_disk_bytes.set(bytes.min(i64::MAX as u64) as i64);
            // The store counts in its own atomics; carry the difference over.
            let sync =
                |c: &prometheus_client::metrics::counter::Counter, now: u64| c.inc_by(now.saturating_sub(c.get()));
            sync(&m.cache_disk_errors, disk.errors.load(std::sync::atomic::Ordering::Relaxed));
            sync(&m.cache_disk_evictions, disk.evictions.load(std::sync::atomic::Ordering::Relaxed));
        }
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &m.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        // The latency histograms are ours (lock-free); they go before the closing `# EOF`.
        if let Some(stripped) = out.strip_suffix("# EOF\n") {
            out.truncate(stripped.len());
        }
        m.latency.encode_classic(&mut out);
        out.push_str("# EOF\n");
        out
    }

    /// The fine latency buckets (for the watch's percentiles; not on `/metrics`).
    pub fn encode_latency_fine(&self) -> String {
        let mut out = String::new();
        self.shared.metrics.latency.encode_fine(&mut out);
        out
    }
}

impl Runtime {
    fn empty(cfg: &Config) -> Self {
        let https_redirect =
            cfg.edge.tls.as_ref().filter(|t| t.redirect_http).and_then(|t| t.listen.first()).map(|a| a.port());
        Self {
            routes: route::Routes::empty(),
            groups: HashMap::new(),
            https_redirect,
            request_id_header: HeaderName::from_bytes(cfg.edge.request_id_header.as_bytes())
                .unwrap_or(HeaderName::from_static("x-request-id")),
            access_log: cfg.edge.access_log,
            timeouts: cfg.edge.timeouts.clone(),
            limits: cfg.edge.limits.clone(),
            images: None,
            shield: None,
            cache_parent_timeout: cfg.cache.parent_timeout,
            trusted_proxies: cfg.edge.trusted_proxies.clone(),
            proxy_protocol: cfg.edge.proxy_protocol,
            escaped_slashes: cfg.edge.escaped_slashes,
        }
    }
}

/// The edge is shared between the control plane and its workers.
const _: () = {
    const fn is_send_sync<T: Send + Sync>() {}
    is_send_sync::<Edge>();
};

//! `flotilla up`: load the config, start the edge, the fleet and the admin API, then supervise
//! signals: SIGHUP reloads, SIGTERM/SIGINT drain and exit 0 (the edge drains first, then the
//! fleet stops its instances).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use flotilla_admin::{AdminState, Control};
use flotilla_cluster::stats::ClusterStats;
use flotilla_edge::Edge;
use flotilla_fleet::Fleet;

use crate::fleet_bridge::EdgeRegistrar;
use tokio::signal::unix::{signal, SignalKind};

/// Reloads from the same file the process started with.
struct Reloader {
    path: PathBuf,
    edge: Arc<Edge>,
    fleet: Arc<Fleet>,
    certs: Arc<crate::certs::Certificates>,
    cluster: Option<Arc<flotilla_cluster::Cluster>>,
}

impl Control for Reloader {
    fn reload(&self) -> Result<(), String> {
        let cfg = flotilla_config::load(&self.path).map_err(|e| e.to_string())?;
        for w in &cfg.warnings {
            tracing::warn!(warning = %w, "config");
        }
        self.edge.reload(&cfg).map_err(|e| e.to_string())?;
        self.fleet.reconfigure(&cfg);
        self.certs.reconfigure(&cfg);
        Ok(())
    }

    fn certificates(&self) -> serde_json::Value {
        self.certs.list()
    }

    fn metrics(&self) -> String {
        let mut text = self.certs.metrics();
        if let Some(c) = &self.cluster {
            text.push_str(&c.encode_metrics());
        }
        text
    }
}

pub async fn run(path: PathBuf) -> anyhow::Result<()> {
    let cfg = flotilla_config::load(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
    for w in &cfg.warnings {
        tracing::warn!(warning = %w, "config");
    }
    // Before anything opens a socket: a 1024 soft limit stalls clients under a slowloris flood.
    match flotilla_edge::raise_nofile() {
        Ok((soft, hard)) => tracing::info!(soft, hard, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
    if cfg.groups.values().any(|g| matches!(g.launch.driver, flotilla_config::LaunchDriver::Docker { .. })) {
        let configured = cfg.fleet.deployment_configured;
        tracing::info!(deployment = %cfg.fleet.deployment, configured, "fleet: containers and services are named and labelled with this deployment id");
    }
    let edge = Arc::new(Edge::new(&cfg).context("starting the edge")?);
    // A cluster node catches up on invalidations it missed before it serves anything.
    let cluster = match &cfg.cluster {
        Some(c) => Some(join_cluster(&cfg, c, &edge).await?),
        None => None,
    };
    edge.start(&cfg).context("starting the edge")?;
    let certs = Arc::new(crate::certs::Certificates::start(&cfg, edge.managed_tls()));
    // Instances are launched from this (current-thread) runtime, so they are children of the
    // main thread and get SIGTERM if flotilla dies (see flotilla-fleet's process.rs).
    let coordinator = cluster
        .clone()
        .map(|c| Arc::new(crate::cluster_bridge::FleetCoordinator(c)) as Arc<dyn flotilla_fleet::Coordinator>);
    let local_registrar: Arc<dyn flotilla_fleet::Registrar> = Arc::new(EdgeRegistrar(edge.clone()));
    let (registrar, stats) = match &cluster {
        Some(c) => {
            let local = Arc::new(crate::cluster_bridge::EdgeStats(edge.clone()));
            let stats = ClusterStats::start(c.clone(), local, crate::cluster_bridge::LATENCY_LAYOUT);
            let shared = swarm_target_groups(&cfg);
            let r = crate::cluster_bridge::ClusterRegistrar { inner: local_registrar, stats: stats.clone(), shared };
            (Arc::new(r) as Arc<dyn flotilla_fleet::Registrar>, Some((stats, swarm_target_groups(&cfg))))
        }
        None => (local_registrar, None),
    };
    let fleet = Arc::new(Fleet::start_coordinated(&cfg, registrar, coordinator));
    let reloader = Arc::new(Reloader {
        path: path.clone(),
        edge: edge.clone(),
        fleet: fleet.clone(),
        certs,
        cluster: cluster.clone(),
    });
    let (e, f, c) = (edge.clone(), fleet.clone(), reloader.clone());
    let cluster_series = stats.as_ref().map(|(s, _)| s.clone());
    let watch = flotilla_watch::Watch::start(
        &cfg,
        Arc::new(move || {
            let mut text = flotilla_admin::exposition_for_watch(&e, &f, &*c);
            // The cluster's totals go to the watch (for cluster-scoped SLOs), not to /metrics.
            if let Some(s) = &cluster_series {
                text.truncate(text.len().saturating_sub("# EOF\n".len()));
                text.push_str(&s.exposition());
                text.push_str("# EOF\n");
            }
            text
        }),
    );
    if let Some(c) =
        cluster.as_ref().filter(|_| cfg.alarms.iter().any(|a| a.cluster) || cfg.slos.iter().any(|s| s.cluster))
    {
        // Every node evaluates cluster-scoped alarms and SLOs; the holder of this lease notifies.
        let leads = c.lead("watch:notifications");
        watch.set_cluster_gate(Arc::new(move || leads.borrow().is_some()));
    }
    let w = watch.clone();
    fleet.set_scale_out_guard(Arc::new(move || w.budget_cap()));
    let w = watch.clone();
    fleet.set_metric_source(Arc::new(move |name, labels, window| {
        // A swarm group's latency in a cluster: every edge's requests, merged bucket by bucket.
        if let (Some((stats, shared)), "http_latency_p95", Some(tg)) = (&stats, name, labels.get("target_group")) {
            if shared.contains(tg) {
                let w = std::time::Duration::from_secs_f64(window.max(1.0));
                if let Some(p95) = stats.latency_quantile(tg, w, 0.95) {
                    return Some(p95);
                }
            }
        }
        w.recent(name, labels, window)
    }));

    let (admin_stop_tx, admin_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let admin_task = match &cfg.admin {
        Some(admin) => {
            let listener = tokio::net::TcpListener::bind(admin.listen)
                .await
                .with_context(|| format!("admin API: cannot listen on {}", admin.listen))?;
            tracing::info!(listen = %admin.listen, "admin API listening");
            let state = AdminState {
                edge: edge.clone(),
                fleet: fleet.clone(),
                watch: watch.clone(),
                access: flotilla_admin::access::Access::new(admin),
                control: reloader.clone(),
                cluster: cluster.clone(),
            };
            Some(tokio::spawn(flotilla_admin::serve(listener, state, async move {
                let _ = admin_stop_rx.await;
            })))
        }
        None => None,
    };

    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                let r = reloader.clone();
                match tokio::task::spawn_blocking(move || r.reload()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "reload refused; the previous configuration keeps serving"),
                    Err(e) => tracing::error!(error = %e, "reload task failed"),
                }
            }
        }
    }
    tracing::info!("shutting down: draining in-flight requests");
    edge.shutdown().await;
    fleet.shutdown().await;
    if let Some(c) = &cluster {
        c.stop().await;
    }
    let w = watch.clone();
    let _ = tokio::task::spawn_blocking(move || w.persist()).await;
    let _ = admin_stop_tx.send(());
    if let Some(t) = admin_task {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), t).await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Joins `[cluster]`: starts the heartbeat and invalidation loops (waiting a bounded time to
/// catch up on missed invalidations) and makes route rate limits cluster-wide.
async fn join_cluster(
    cfg: &flotilla_config::Config,
    cluster: &flotilla_config::ClusterConfig,
    edge: &Arc<Edge>,
) -> anyhow::Result<Arc<flotilla_cluster::Cluster>> {
    let address = match (&cfg.admin, cfg.edge.listen.first()) {
        (Some(a), _) => a.listen.to_string(),
        (None, Some(l)) => l.to_string(),
        (None, None) => String::new(),
    };
    let identity = flotilla_cluster::Identity {
        address,
        version: env!("CARGO_PKG_VERSION").to_string(),
        config_hash: crate::cluster_bridge::config_hash(cfg),
        deployment: cfg.fleet.deployment.clone(),
    };
    let state_dir = cfg.cache.disk.as_ref().map(|d| d.path.clone());
    let applier = Arc::new(crate::cluster_bridge::EdgeApplier(edge.clone()));
    let started =
        flotilla_cluster::Cluster::start(cluster, identity, state_dir, applier, std::time::Duration::from_secs(5))
            .await
            .context("joining the cluster")?;
    if let Err(e) = crate::cluster_bridge::check_deployment(cfg, &started).await {
        started.stop().await;
        return Err(e);
    }
    edge.set_shared_limiter(Arc::new(crate::cluster_bridge::RedisLimits(started.clone())));
    tracing::info!(node = %cluster.node, redis = %cluster.redis.url, "joined the cluster");
    Ok(started)
}

/// Target groups fed by swarm groups: their targets are the same services on every node.
fn swarm_target_groups(cfg: &flotilla_config::Config) -> std::collections::HashSet<String> {
    cfg.groups
        .values()
        .filter(|g| matches!(&g.launch.driver, flotilla_config::LaunchDriver::Docker { swarm: Some(_), .. }))
        .map(|g| g.target_group.clone())
        .collect()
}

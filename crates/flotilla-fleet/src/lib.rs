//! Flotilla's fleet: auto scaling groups of app instances.
//!
//! The fleet never imports the edge. It meets it through [`Registrar`]: instances are
//! registered into a target group, the edge's health checks say when they are in service, and
//! deregistration drains them before they stop. Scaling decisions are pure code in [`policy`],
//! shared with the trace simulator in [`simulate`].

mod budget;
mod container;
mod docker;
mod engine;
mod group;
pub mod policy;
mod process;
mod refresh;
mod registrar;
mod runner;
mod schedule;
mod scope;
pub mod simulate;
mod swarm;
mod termination;
mod time;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_config::Config;
use tokio::task::JoinHandle;

pub use budget::BudgetView;
pub use group::{Activity, GroupView, InstanceState, InstanceView, Role};
pub use refresh::{RefreshOptions, RefreshStatus, RefreshView};
pub use registrar::{Registrar, TargetHealth, TargetStatus};

use group::{GroupHandle, Reconciler, Request};

/// A metric's recent value: (name, labels to match, window in seconds) → the average of the
/// window's datapoints. The binary answers it from the watch.
pub type MetricSource = Arc<dyn Fn(&str, &BTreeMap<String, String>, f64) -> Option<f64> + Send + Sync>;

/// Cluster-wide coordination for groups whose instances are cluster-wide (`driver = "swarm"`):
/// which node leads each group's control loop, and the state the next leader carries on from.
/// The binary implements it over Redis; without it every node runs its groups itself.
pub trait Coordinator: Send + Sync + 'static {
    /// `Some(fencing token)` while this node leads `group`'s loop.
    fn leadership(&self, group: &str) -> tokio::sync::watch::Receiver<Option<u64>>;
    /// The state the last leader saved, if any.
    fn load(&self, group: &str) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<String>> + Send + '_>>;
    /// Saves `state` only if `token` still leads: `Ok(false)` means this node was deposed.
    fn save(
        &self,
        group: &str,
        token: u64,
        state: String,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<bool, String>> + Send + '_>>;
}

/// Asked before any scale-out; Some(reason) refuses it.
pub type ScaleOutGuard = Arc<dyn Fn() -> Option<String> + Send + Sync>;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FleetError {
    #[error("no group named {0:?}")]
    UnknownGroup(String),
    #[error("desired capacity {desired} is outside the group's bounds [{min}, {max}]")]
    OutOfBounds { desired: u32, min: u32, max: u32 },
    #[error("refresh {0} is still running (cancel it first)")]
    RefreshRunning(u64),
    #[error("{0}")]
    BadRequest(String),
    #[error("no scale-out: {0}")]
    ScaleOutBlocked(String),
    #[error("this node does not lead group {0:?}'s control loop: ask the node that does (GET /api/v1/cluster shows who leads what)")]
    NotLeader(String),
}

struct Running {
    handle: Arc<GroupHandle>,
    policies_version: Arc<AtomicU64>,
}

impl Running {
    /// Changes go to the leader: a follower's own state is not the group's.
    fn refuse_if_following(&self, name: &str) -> Result<(), FleetError> {
        match self.handle.lock().role {
            group::Role::Follower => Err(FleetError::NotLeader(name.to_string())),
            _ => Ok(()),
        }
    }
}

/// Every group in the config, each driven by its own reconcile task.
pub struct Fleet {
    groups: BTreeMap<String, Running>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Fleet {
    /// Starts a reconcile task per group on the current tokio runtime. Instances are launched
    /// from there, so that runtime's threads should live as long as the fleet.
    pub fn start(cfg: &Config, registrar: Arc<dyn Registrar>) -> Self {
        Self::start_coordinated(cfg, registrar, None)
    }

    /// Like `start`; swarm groups run their loop only while `coordinator` says this node leads.
    pub fn start_coordinated(
        cfg: &Config,
        registrar: Arc<dyn Registrar>,
        coordinator: Option<Arc<dyn Coordinator>>,
    ) -> Self {
        let mut groups = BTreeMap::new();
        let mut tasks = Vec::new();
        // Read once: containers and services launched under one id must be found under it.
        let scope = scope::Scope {
            deployment: cfg.fleet.deployment.clone(),
            node: cfg.cluster.as_ref().map(|c| c.node.clone()),
        };
        for g in cfg.groups.values() {
            let handle = GroupHandle::new(g.clone(), scope.clone());
            // Budget and schedule state live with the watch's data.
            handle.lock().state_file =
                cfg.watch.data_dir.as_ref().map(|d| d.join("groups").join(format!("{}.state", g.name)));
            let policies_version = Arc::new(AtomicU64::new(1));
            let (h, r, p, c) = (handle.clone(), registrar.clone(), policies_version.clone(), coordinator.clone());
            tasks.push(tokio::spawn(async move { Reconciler::start(h, r, p, c).await.run().await }));
            groups.insert(g.name.clone(), Running { handle, policies_version });
        }
        Self { groups, tasks: Mutex::new(tasks) }
    }

    pub fn groups(&self) -> Vec<GroupView> {
        self.groups.values().map(|g| g.handle.view()).collect()
    }

    pub fn group(&self, name: &str) -> Result<GroupView, FleetError> {
        Ok(self.running(name)?.handle.view())
    }

    /// Prometheus text for the groups: capacity, instances by state, per-instance CPU and
    /// memory. Names are validated (letters, digits, '-', '_'), so no label escaping is needed.
    pub fn encode_metrics(&self) -> String {
        use std::fmt::Write as _;
        let groups = self.groups();
        let mut out = String::new();
        let _ = writeln!(out, "# TYPE flotilla_group_desired_capacity gauge");
        for g in &groups {
            let _ = writeln!(out, "flotilla_group_desired_capacity{{group=\"{}\"}} {}", g.name, g.desired);
        }
        let _ = writeln!(out, "# TYPE flotilla_group_instances gauge");
        for g in &groups {
            for state in ["pending", "in_service", "unhealthy", "draining", "terminating"] {
                let n = g.instances.iter().filter(|i| i.state.as_str() == state).count();
                let _ = writeln!(out, "flotilla_group_instances{{group=\"{}\",state=\"{state}\"}} {n}", g.name);
            }
        }
        let _ = writeln!(out, "# TYPE flotilla_instance_cpu_percent gauge");
        for g in &groups {
            for i in g.instances.iter() {
                if let Some(c) = i.cpu {
                    let _ = writeln!(
                        out,
                        "flotilla_instance_cpu_percent{{group=\"{}\",instance=\"{}\"}} {c}",
                        g.name, i.id
                    );
                }
            }
        }
        let _ = writeln!(out, "# TYPE flotilla_instance_memory_bytes gauge");
        for g in &groups {
            for i in g.instances.iter().filter(|i| i.memory_bytes > 0) {
                let _ = writeln!(
                    out,
                    "flotilla_instance_memory_bytes{{group=\"{}\",instance=\"{}\"}} {}",
                    g.name, i.id, i.memory_bytes
                );
            }
        }
        out
    }

    /// Sets the desired capacity (within the group's bounds), as `PUT .../desired` does.
    pub fn set_desired(&self, name: &str, desired: u32) -> Result<GroupView, FleetError> {
        let g = self.running(name)?;
        g.refuse_if_following(name)?;
        {
            let mut s = g.handle.lock();
            let (min, max) = (s.cfg.min, s.cfg.max);
            if desired < min || desired > max {
                return Err(FleetError::OutOfBounds { desired, min, max });
            }
            if desired > s.desired {
                if let Some(reason) = s.scale_out_blocked() {
                    return Err(FleetError::ScaleOutBlocked(reason));
                }
            }
            let from = s.desired;
            if from != desired {
                s.desired = desired;
                s.record(
                    format!("Changing desired capacity from {from} to {desired}"),
                    "set through the admin API".into(),
                    "successful",
                );
            }
        }
        g.handle.request(Request::Desired);
        Ok(g.handle.view())
    }

    /// The group's scaling history, newest first.
    pub fn activity(&self, name: &str) -> Result<Vec<Activity>, FleetError> {
        Ok(self.running(name)?.handle.activity())
    }

    /// Installs a check every group makes before scaling out (the binary wires the watch's
    /// account budget here, so the fleet needs no knowledge of the watch).
    pub fn set_scale_out_guard(&self, guard: ScaleOutGuard) {
        for g in self.groups.values() {
            g.handle.lock().guard = Some(guard.clone());
        }
    }

    /// Lets policies use the watch's series (`latency_p95`, or any metric name).
    pub fn set_metric_source(&self, source: MetricSource) {
        for g in self.groups.values() {
            g.handle.lock().metrics = Some(source.clone());
        }
    }

    /// Starts an instance refresh to the current launch template.
    pub fn start_refresh(&self, name: &str, opts: RefreshOptions) -> Result<RefreshView, FleetError> {
        self.running(name)?.refuse_if_following(name)?;
        if opts.min_healthy_percentage > 100 {
            return Err(FleetError::BadRequest("min_healthy_percentage must be between 0 and 100".into()));
        }
        if opts.checkpoints.iter().any(|c| *c == 0 || *c > 100) {
            return Err(FleetError::BadRequest("checkpoints are percentages between 1 and 100".into()));
        }
        let g = self.running(name)?;
        let view = {
            let mut s = g.handle.lock();
            if let Some(r) = s.refresh.as_ref().filter(|r| r.view.status.is_active()) {
                return Err(FleetError::RefreshRunning(r.view.id));
            }
            let id = s.next_refresh_id;
            s.next_refresh_id += 1;
            let to = s.launch_version;
            let outdated = s.outdated(to);
            let from = s.templates.range(..to).next_back().map(|(v, _)| *v).unwrap_or(to);
            let mut r = refresh::Refresh::new(id, from, to, outdated, opts);
            if outdated == 0 {
                r.finish(
                    RefreshStatus::Successful,
                    Some("every instance already runs the current launch template".into()),
                );
            }
            s.record(
                format!("Refresh {id} started: {outdated} instances to launch template v{to}"),
                format!("requested through the admin API (min healthy {} %)", r.view.min_healthy_percentage),
                "in_progress",
            );
            let view = r.view.clone();
            s.refresh = Some(r);
            view
        };
        g.handle.request(Request::Refresh);
        Ok(view)
    }

    /// The running or last refresh of a group.
    pub fn refresh(&self, name: &str) -> Result<Option<RefreshView>, FleetError> {
        Ok(self.running(name)?.handle.lock().refresh.as_ref().map(|r| r.view.clone()))
    }

    /// Stops a running refresh where it is (instances already replaced stay replaced).
    pub fn cancel_refresh(&self, name: &str) -> Result<Option<RefreshView>, FleetError> {
        let g = self.running(name)?;
        g.refuse_if_following(name)?;
        let mut s = g.handle.lock();
        let Some(mut r) = s.refresh.take() else { return Ok(None) };
        if r.view.status.is_active() {
            r.finish(RefreshStatus::Cancelled, Some("cancelled through the admin API".into()));
            s.record(
                format!("Refresh {} cancelled", r.view.id),
                "requested through the admin API".into(),
                "successful",
            );
        }
        let view = r.view.clone();
        s.refresh = Some(r);
        Ok(Some(view))
    }

    /// Applies a reloaded config to groups that exist in both: bounds, policies and the launch
    /// template (a changed template becomes a new version, used by new instances).
    pub fn reconfigure(&self, cfg: &Config) {
        for (name, g) in &self.groups {
            let Some(new) = cfg.groups.get(name) else {
                tracing::warn!(group = %name, "group removed from the config; it keeps running until restart");
                continue;
            };
            let mut s = g.handle.lock();
            if s.cfg == *new {
                continue;
            }
            if s.cfg.launch != new.launch {
                let v = s.templates.keys().next_back().copied().unwrap_or(0) + 1;
                s.launch_version = v;
                s.templates.insert(v, new.launch.clone());
                s.record(format!("Launch template is now v{v}"), "configuration reloaded".into(), "successful");
            }
            if s.cfg.policies != new.policies || s.cfg.cooldown != new.cooldown || s.cfg.schedules != new.schedules {
                g.policies_version.fetch_add(1, Ordering::AcqRel);
            }
            match (&mut s.budget, &new.budget) {
                (Some(b), Some(cfg)) => b.reconfigure(cfg.clone()),
                (b, cfg) => *b = cfg.clone().map(budget::BudgetState::new),
            }
            s.cfg = new.clone();
            s.desired = s.desired.clamp(new.min, new.max);
            drop(s);
            g.handle.request(Request::Reconfigured);
        }
        for name in cfg.groups.keys().filter(|n| !self.groups.contains_key(*n)) {
            tracing::warn!(group = %name, "new group in the config; it starts on the next restart");
        }
    }

    /// Drains and stops every instance (SIGTERM, then SIGKILL after each group's stop timeout).
    pub async fn shutdown(&self) {
        let mut limit = Duration::from_secs(1);
        for g in self.groups.values() {
            let mut s = g.handle.lock();
            s.stopping = true;
            limit = limit.max(s.cfg.stop_timeout + Duration::from_secs(2));
            drop(s);
            g.handle.request(Request::Stop);
        }
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for t in tasks {
            if tokio::time::timeout(limit, t).await.is_err() {
                tracing::warn!("a group did not stop within {limit:?}; its processes are killed on exit");
            }
        }
    }

    fn running(&self, name: &str) -> Result<&Running, FleetError> {
        self.groups.get(name).ok_or_else(|| FleetError::UnknownGroup(name.to_string()))
    }
}

//! Flotilla's fleet: auto scaling groups of app instances.
//!
//! The fleet never imports the edge. It meets it through [`Registrar`]: instances are
//! registered into a target group, the edge's health checks say when they are in service, and
//! deregistration drains them before they stop. Scaling decisions are pure code in [`policy`],
//! shared with the trace simulator in [`simulate`].

mod budget;
mod group;
pub mod policy;
mod process;
mod registrar;
pub mod simulate;
mod termination;
mod time;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_config::Config;
use tokio::task::JoinHandle;

pub use budget::BudgetView;
pub use group::{Activity, GroupView, InstanceState, InstanceView};
pub use registrar::{Registrar, TargetHealth, TargetStatus};

use group::GroupHandle;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FleetError {
    #[error("no group named {0:?}")]
    UnknownGroup(String),
    #[error("desired capacity {desired} is outside the group's bounds [{min}, {max}]")]
    OutOfBounds { desired: u32, min: u32, max: u32 },
    #[error("the monthly budget is spent ({spent:.2} of {monthly:.2}) and hard_cap is on: no scale-out")]
    BudgetCap { spent: f64, monthly: f64 },
}

struct Running {
    handle: Arc<GroupHandle>,
    policies_version: Arc<AtomicU64>,
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
        let mut groups = BTreeMap::new();
        let mut tasks = Vec::new();
        for g in cfg.groups.values() {
            let handle = GroupHandle::new(g.clone());
            let policies_version = Arc::new(AtomicU64::new(1));
            tasks.push(tokio::spawn(group::run(handle.clone(), registrar.clone(), policies_version.clone())));
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

    /// Sets the desired capacity (within the group's bounds), as `PUT .../desired` does.
    pub fn set_desired(&self, name: &str, desired: u32) -> Result<GroupView, FleetError> {
        let g = self.running(name)?;
        {
            let mut s = g.handle.lock();
            let (min, max) = (s.cfg.min, s.cfg.max);
            if desired < min || desired > max {
                return Err(FleetError::OutOfBounds { desired, min, max });
            }
            if desired > s.desired {
                if let Some(b) = s.budget.as_ref().filter(|b| b.capped()) {
                    return Err(FleetError::BudgetCap { spent: b.spent(), monthly: b.monthly() });
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
        g.handle.wake.notify_one();
        Ok(g.handle.view())
    }

    /// The group's scaling history, newest first.
    pub fn activity(&self, name: &str) -> Result<Vec<Activity>, FleetError> {
        Ok(self.running(name)?.handle.activity())
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
                s.launch_version += 1;
                let v = s.launch_version;
                s.record(format!("Launch template is now v{v}"), "configuration reloaded".into(), "successful");
            }
            if s.cfg.policies != new.policies || s.cfg.cooldown != new.cooldown {
                g.policies_version.fetch_add(1, Ordering::AcqRel);
            }
            match (&mut s.budget, &new.budget) {
                (Some(b), Some(cfg)) => b.reconfigure(cfg.clone()),
                (b, cfg) => *b = cfg.clone().map(budget::BudgetState::new),
            }
            s.cfg = new.clone();
            s.desired = s.desired.clamp(new.min, new.max);
            drop(s);
            g.handle.wake.notify_one();
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
            g.handle.wake.notify_one();
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

//! A group's shared state: what the admin API reads (views, activity) and changes (desired,
//! refresh, bounds), behind one mutex that is never held across an await. The reconcile loop
//! owns everything else ([`super::Reconciler`]).

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use flotilla_config::{GroupConfig, LaunchConfig};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::budget::BudgetState;
use crate::refresh::Refresh;
use crate::time::rfc3339;

/// Activity records kept per group (oldest dropped first).
const MAX_ACTIVITY: usize = 500;
/// Requests waiting for the loop; more are dropped, as the loop is then sure to run anyway.
pub(super) const MAX_REQUESTS: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    /// Launched; waiting for the target group's health checks.
    Pending,
    InService,
    Unhealthy,
    /// Deregistered; the edge is finishing its in-flight requests.
    Draining,
    /// Stop signal sent; waiting for the process to exit.
    Terminating,
}

impl InstanceState {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Pending => "pending",
            InstanceState::InService => "in_service",
            InstanceState::Unhealthy => "unhealthy",
            InstanceState::Draining => "draining",
            InstanceState::Terminating => "terminating",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct InstanceView {
    pub id: String,
    pub state: InstanceState,
    pub addr: SocketAddr,
    pub zone: Option<String>,
    pub launch_version: u32,
    pub launched_at: String,
    pub pid: Option<u32>,
    /// % of one core over the last metrics interval.
    pub cpu: Option<f64>,
    pub memory_bytes: u64,
    pub in_flight: u32,
    /// The container id (docker driver).
    pub container: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Activity {
    pub id: u64,
    pub time: String,
    pub description: String,
    pub cause: String,
    pub status: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupView {
    pub name: String,
    pub target_group: String,
    pub min: u32,
    pub max: u32,
    pub desired: u32,
    pub launch_version: u32,
    pub instances: Vec<InstanceView>,
    pub budget: Option<crate::BudgetView>,
    /// The running or last instance refresh.
    pub refresh: Option<crate::RefreshView>,
    /// `single` (this node runs the group), or for a swarm group in a cluster `leader` or
    /// `follower` (another node runs it; this one serves its instances).
    pub role: Role,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    #[default]
    Single,
    Leader,
    Follower,
}

/// What the admin API or a reload changed, so the loop acts on it now rather than at its next
/// tick (the change itself is already in [`GroupState`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Request {
    /// `PUT .../desired`.
    Desired,
    /// An instance refresh was started.
    Refresh,
    /// A reloaded config changed the group (bounds, policies, launch template).
    Reconfigured,
    /// Flotilla is stopping: drain and stop every instance.
    Stop,
}

pub(super) struct Instance {
    pub view: InstanceView,
    pub seq: u64,
    pub launched: Instant,
    pub state_since: Instant,
}

impl Instance {
    /// A just launched (or adopted) instance: pending until the edge's checks pass.
    pub fn pending(
        id: String,
        addr: SocketAddr,
        zone: Option<String>,
        launch_version: u32,
        pid: Option<u32>,
        seq: u64,
    ) -> Self {
        let now = Instant::now();
        Instance {
            view: InstanceView {
                id,
                state: InstanceState::Pending,
                addr,
                zone,
                launch_version,
                launched_at: rfc3339(SystemTime::now()),
                pid,
                cpu: None,
                memory_bytes: 0,
                in_flight: 0,
                container: None,
            },
            seq,
            launched: now,
            state_since: now,
        }
    }
}

pub(crate) struct GroupState {
    pub cfg: GroupConfig,
    pub launch_version: u32,
    pub desired: u32,
    pub(super) instances: Vec<Instance>,
    pub(super) activity: VecDeque<Activity>,
    pub(super) next_activity: u64,
    pub(super) next_seq: u64,
    pub stopping: bool,
    pub budget: Option<BudgetState>,
    /// Set by the binary: refuses scale-out with a reason (the watch's account budget).
    pub guard: Option<crate::ScaleOutGuard>,
    /// Set by the binary: the watch's series, for `latency_p95` and any other metric name.
    pub metrics: Option<crate::MetricSource>,
    /// Every launch template version seen, so a refresh can roll back to the previous one.
    pub templates: BTreeMap<u32, LaunchConfig>,
    pub refresh: Option<Refresh>,
    pub next_refresh_id: u64,
    /// When a budget-blocked scale-out was last recorded (to record it once, not every tick).
    pub(super) blocked_noted: Option<Instant>,
    pub role: Role,
    /// Set by the fleet with `[watch] data_dir`: where budget and schedule state are saved.
    pub state_file: Option<std::path::PathBuf>,
}

pub struct GroupHandle {
    state: Mutex<GroupState>,
    /// Requests for the loop; the receiving end is taken by the loop when it starts.
    requests: mpsc::Sender<Request>,
    inbox: Mutex<Option<mpsc::Receiver<Request>>>,
    /// The deployment (and node) this group's containers and services are labelled with.
    pub(crate) scope: crate::scope::Scope,
}

impl GroupHandle {
    pub(crate) fn new(cfg: GroupConfig, scope: crate::scope::Scope) -> Arc<Self> {
        let desired = cfg.desired.clamp(cfg.min, cfg.max);
        let budget = cfg.budget.clone().map(BudgetState::new);
        let (requests, inbox) = mpsc::channel(MAX_REQUESTS);
        Arc::new(Self {
            state: Mutex::new(GroupState {
                budget,
                guard: None,
                metrics: None,
                templates: BTreeMap::from([(1, cfg.launch.clone())]),
                refresh: None,
                next_refresh_id: 1,
                blocked_noted: None,
                role: Role::Single,
                state_file: None,
                cfg,
                launch_version: 1,
                desired,
                instances: Vec::new(),
                activity: VecDeque::new(),
                next_activity: 1,
                next_seq: 1,
                stopping: false,
            }),
            requests,
            inbox: Mutex::new(Some(inbox)),
            scope,
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, GroupState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tells the loop what changed. Never waits: with [`MAX_REQUESTS`] already queued the loop
    /// is about to run, and the change is in the state it will read.
    pub(crate) fn request(&self, what: Request) {
        let _ = self.requests.try_send(what);
    }

    /// The loop's end of the requests (once).
    pub(super) fn take_inbox(&self) -> Option<mpsc::Receiver<Request>> {
        self.inbox.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    pub fn view(&self) -> GroupView {
        let s = self.lock();
        GroupView {
            name: s.cfg.name.clone(),
            target_group: s.cfg.target_group.clone(),
            min: s.cfg.min,
            max: s.cfg.max,
            desired: s.desired,
            launch_version: s.launch_version,
            instances: s.instances.iter().map(|i| i.view.clone()).collect(),
            budget: s.budget.as_ref().map(|b| b.view()),
            refresh: s.refresh.as_ref().map(|r| r.view.clone()),
            role: s.role,
        }
    }

    pub fn activity(&self) -> Vec<Activity> {
        self.lock().activity.iter().rev().cloned().collect()
    }
}

impl GroupState {
    pub(crate) fn record(&mut self, description: String, cause: String, status: &'static str) {
        tracing::info!(group = %self.cfg.name, %cause, status, "{description}");
        if self.activity.len() == MAX_ACTIVITY {
            self.activity.pop_front();
        }
        let id = self.next_activity;
        self.next_activity += 1;
        self.activity.push_back(Activity { id, time: rfc3339(SystemTime::now()), description, cause, status });
    }

    /// Why scale-out is refused now, if it is: the group's own budget cap or the fleet-wide guard
    /// (the account budget).
    pub(crate) fn scale_out_blocked(&self) -> Option<String> {
        if let Some(b) = self.budget.as_ref().filter(|b| b.capped()) {
            return Some(format!(
                "the monthly budget is spent ({:.2} of {:.2}) and hard_cap is on",
                b.spent(),
                b.monthly()
            ));
        }
        self.guard.as_ref().and_then(|g| g())
    }

    /// Counts a failed new instance against a running refresh that launches this version.
    pub(super) fn new_instance_failed(&mut self, version: u32) {
        if let Some(r) = self.refresh.as_mut().filter(|r| r.view.status.is_active() && r.target == version) {
            r.failures += 1;
        }
    }

    /// Live instances not on `version`.
    pub(crate) fn outdated(&self, version: u32) -> u32 {
        self.live().filter(|i| i.view.launch_version != version).count() as u32
    }

    pub(super) fn set_state(&mut self, id: &str, state: InstanceState) {
        if let Some(i) = self.instances.iter_mut().find(|i| i.view.id == id) {
            i.view.state = state;
            i.state_since = Instant::now();
        }
    }

    /// Instances that count toward capacity: not draining or stopping.
    pub(super) fn live(&self) -> impl Iterator<Item = &Instance> {
        self.instances.iter().filter(|i| is_live(i.view.state))
    }
}

pub(super) fn is_live(state: InstanceState) -> bool {
    matches!(state, InstanceState::Pending | InstanceState::InService | InstanceState::Unhealthy)
}

/// How long ago `t` was, on the loop's clock (tokio's, so tests can pause it).
pub(super) fn since(t: Instant) -> Duration {
    Instant::now().saturating_duration_since(t)
}

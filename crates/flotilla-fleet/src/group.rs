//! One auto scaling group: shared state (read by the admin API) and the reconcile loop that
//! launches, registers, watches, drains and stops instances to keep the group at desired.
//!
//! The loop owns the child processes; the shared state holds only what views need, behind a
//! mutex that is never held across an await.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use flotilla_config::{GroupConfig, LaunchConfig};
use serde::Serialize;
use tokio::sync::Notify;

use crate::budget::BudgetState;
use crate::policy::{Observation, Scaler, CPU, LATENCY_P95, REQUESTS_PER_TARGET};
use crate::process::{self, since, Placeholders};
use crate::refresh::{Refresh, RefreshStatus, Step};
use crate::registrar::{Registrar, TargetHealth};
use crate::runner::{LaunchContext, Runner};
use crate::schedule::{self, Scheduler};
use crate::termination::{self, Candidate};
use crate::time::rfc3339;

mod coordinate;
mod saved;

/// Activity records kept per group (oldest dropped first).
const MAX_ACTIVITY: usize = 500;
/// How often the loop looks at its instances (policies run on `metrics_interval`).
const RECONCILE_EVERY: Duration = Duration::from_millis(250);
/// How often a swarm group's leader compares its instances with the services Swarm runs.
const SWARM_CHECK_EVERY: Duration = Duration::from_secs(5);
/// A draining instance the edge never lets go of is stopped anyway after this.
const MAX_DRAIN: Duration = Duration::from_secs(3600);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

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

struct Instance {
    view: InstanceView,
    seq: u64,
    launched: Instant,
    state_since: Instant,
}

impl Instance {
    /// A just launched (or adopted) instance: pending until the edge's checks pass.
    fn pending(
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
    instances: Vec<Instance>,
    activity: VecDeque<Activity>,
    next_activity: u64,
    next_seq: u64,
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
    blocked_noted: Option<Instant>,
    pub role: Role,
    /// Set by the fleet with `[watch] data_dir`: where budget and schedule state are saved.
    pub state_file: Option<std::path::PathBuf>,
}

pub struct GroupHandle {
    state: Mutex<GroupState>,
    pub(crate) wake: Notify,
    /// The deployment (and node) this group's containers and services are labelled with.
    pub(crate) scope: crate::scope::Scope,
}

impl GroupHandle {
    pub(crate) fn new(cfg: GroupConfig, scope: crate::scope::Scope) -> Arc<Self> {
        let desired = cfg.desired.clamp(cfg.min, cfg.max);
        let budget = cfg.budget.clone().map(BudgetState::new);
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
            wake: Notify::new(),
            scope,
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, GroupState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
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
    fn new_instance_failed(&mut self, version: u32) {
        if let Some(r) = self.refresh.as_mut().filter(|r| r.view.status.is_active() && r.target == version) {
            r.failures += 1;
        }
    }

    /// Live instances not on `version`.
    pub(crate) fn outdated(&self, version: u32) -> u32 {
        self.live().filter(|i| i.view.launch_version != version).count() as u32
    }

    fn set_state(&mut self, id: &str, state: InstanceState) {
        if let Some(i) = self.instances.iter_mut().find(|i| i.view.id == id) {
            i.view.state = state;
            i.state_since = Instant::now();
        }
    }

    fn live(&self) -> impl Iterator<Item = &Instance> {
        self.instances.iter().filter(|i| {
            matches!(i.view.state, InstanceState::Pending | InstanceState::InService | InstanceState::Unhealthy)
        })
    }
}

/// What the loop keeps that views do not need.
struct Local {
    runners: HashMap<String, Runner>,
    requests: HashMap<String, (u64, Instant)>,
    term_deadline: HashMap<String, Instant>,
    scaler: Scaler,
    scheduler: Scheduler,
    policies_version: u64,
    started: Instant,
    next_metrics: Instant,
    launch_failures: u32,
    next_launch: Instant,
    /// Unix milliseconds of the last step-policy action, saved for the next leader's cooldown.
    last_step_unix_ms: Option<u64>,
    /// Unix milliseconds at `started`: the policies' clock zero, for handing their state over.
    epoch_ms: u64,
    /// The handle's scope, for launches (which hold the state lock, not the handle).
    scope: crate::scope::Scope,
    /// Saves budget and schedule state (with `[watch] data_dir`).
    saver: Option<saved::Saver>,
}

/// Runs until the group is stopping and every instance has exited.
pub(crate) async fn run(
    handle: Arc<GroupHandle>,
    registrar: Arc<dyn Registrar>,
    policies_version: Arc<std::sync::atomic::AtomicU64>,
    coordinator: Option<Arc<dyn crate::Coordinator>>,
) {
    let (scaler, scheduler, interval) = {
        let s = handle.lock();
        (
            Scaler::new(&s.cfg.policies, s.cfg.cooldown),
            Scheduler::new(&s.cfg.schedules, SystemTime::now()),
            s.cfg.metrics_interval,
        )
    };
    let (name, docker, swarm) = {
        let s = handle.lock();
        match &s.cfg.launch.driver {
            flotilla_config::LaunchDriver::Docker { swarm, .. } => (s.cfg.name.clone(), true, swarm.is_some()),
            _ => (s.cfg.name.clone(), false, false),
        }
    };
    // A swarm group in a cluster: its services belong to whichever node leads; they are adopted,
    // never removed as stale.
    let mut lead = coordinator.filter(|_| swarm).map(|c| {
        let rx = c.leadership(&name);
        (c, rx)
    });
    if docker {
        let d = crate::docker::Docker::default();
        if d.available().await {
            if lead.is_none() {
                d.remove_stale(&handle.scope, &name).await;
            }
            if swarm {
                if lead.is_none() {
                    crate::swarm::remove_stale(&d, &handle.scope, &name).await;
                }
                if !crate::swarm::is_manager(&d).await {
                    handle.lock().record(
                        "This Docker engine is not a Swarm manager".into(),
                        "driver = \"swarm\" needs `docker swarm init` (or a manager's socket); launches fail and back off until it is one".into(),
                        "failed",
                    );
                }
            }
        } else {
            handle.lock().record(
                "The Docker daemon is not reachable".into(),
                "driver = \"docker\" needs dockerd on /var/run/docker.sock (or DOCKER_HOST=unix://…); launches fail and back off until it answers".into(),
                "failed",
            );
        }
    }
    let now = Instant::now();
    let mut local = Local {
        runners: HashMap::new(),
        requests: HashMap::new(),
        term_deadline: HashMap::new(),
        scaler,
        scheduler,
        policies_version: 0,
        started: now,
        next_metrics: now + interval,
        launch_failures: 0,
        next_launch: now,
        last_step_unix_ms: None,
        epoch_ms: coordinate::unix_ms(SystemTime::now()),
        scope: handle.scope.clone(),
        saver: None,
    };
    let state_file = handle.lock().state_file.clone();
    if let Some(path) = state_file {
        let (saver, minute) = saved::restore(&handle, path);
        if let Some(minute) = minute {
            let s = handle.lock();
            local.scheduler = Scheduler::resume(&s.cfg.schedules, minute, SystemTime::now());
        }
        local.saver = Some(saver);
    }
    let mut leading: Option<u64> = None;
    let mut followed = std::collections::HashSet::new();
    let mut next_swarm_check = Instant::now();
    let mut last_saved = String::new();
    loop {
        if let Some((c, rx)) = &mut lead {
            let token = *rx.borrow_and_update();
            match (token, leading) {
                (Some(t), l) if l != Some(t) => {
                    let saved = c.load(&name).await;
                    coordinate::take_over(&handle, &*registrar, &mut local, saved, t).await;
                    followed.clear();
                    last_saved.clear();
                    leading = Some(t);
                }
                (None, Some(_)) => {
                    coordinate::step_down(&handle, &mut local);
                    leading = None;
                }
                _ => {}
            }
            if handle.lock().stopping {
                // Shutting down a node must not stop the group's services: the next leader
                // adopts them.
                if leading.is_some() {
                    coordinate::step_down(&handle, &mut local);
                }
                saved::save_local(&handle, &mut local, true).await;
                return;
            }
            handle.lock().role = if leading.is_some() { Role::Leader } else { Role::Follower };
            if leading.is_none() {
                coordinate::follow(&handle, &*registrar, &mut followed).await;
                tokio::select! {
                    _ = tokio::time::sleep(RECONCILE_EVERY) => {}
                    _ = rx.changed() => {}
                    _ = handle.wake.notified() => {}
                }
                continue;
            }
        }
        if leading.is_some() && Instant::now() >= next_swarm_check {
            next_swarm_check = Instant::now() + SWARM_CHECK_EVERY;
            coordinate::reconcile(&handle, &*registrar, &mut local).await;
        }
        let current = policies_version.load(std::sync::atomic::Ordering::Acquire);
        if current != local.policies_version {
            let s = handle.lock();
            local.scaler = Scaler::new(&s.cfg.policies, s.cfg.cooldown);
            local.scheduler = Scheduler::new(&s.cfg.schedules, SystemTime::now());
            local.policies_version = current;
        }
        reap(&handle, &*registrar, &mut local);
        note_container_ids(&handle, &local);
        note_addresses(&handle, &*registrar, &local);
        watch_health(&handle, &*registrar, &mut local);
        advance_stops(&handle, &*registrar, &mut local);
        run_schedules(&handle, &mut local);
        if Instant::now() >= local.next_metrics {
            evaluate_policies(&handle, &*registrar, &mut local);
        }
        step_refresh(&handle, &*registrar);
        if resize(&handle, &*registrar, &mut local) {
            saved::save_local(&handle, &mut local, true).await;
            return;
        }
        saved::save_local(&handle, &mut local, false).await;
        if let (Some((c, _)), Some(token)) = (&lead, leading) {
            let policies = Some(local.scaler.export(local.epoch_ms));
            let snapshot = handle.lock().snapshot(local.last_step_unix_ms, policies);
            if snapshot != last_saved {
                match c.save(&name, token, snapshot.clone()).await {
                    Ok(true) => last_saved = snapshot,
                    Ok(false) => {
                        tracing::warn!(group = %name, token, "the group's state save was refused: another node leads now");
                        coordinate::step_down(&handle, &mut local);
                        leading = None;
                    }
                    Err(e) => tracing::debug!(group = %name, error = %e, "saving the group's state failed; retrying"),
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(RECONCILE_EVERY) => {}
            _ = handle.wake.notified() => {}
        }
    }
}

/// Collects exited processes: expected exits end a termination; others are replaced.
fn reap(handle: &GroupHandle, registrar: &dyn Registrar, local: &mut Local) {
    let mut exited = Vec::new();
    for (id, runner) in local.runners.iter_mut() {
        if let Some(status) = runner.exited() {
            exited.push((id.clone(), status));
        }
    }
    if exited.is_empty() {
        return;
    }
    let mut s = handle.lock();
    for (id, status) in exited {
        local.runners.remove(&id);
        local.requests.remove(&id);
        local.term_deadline.remove(&id);
        let Some(pos) = s.instances.iter().position(|i| i.view.id == id) else { continue };
        let inst = s.instances.remove(pos);
        match inst.view.state {
            InstanceState::Terminating => {
                s.record(format!("Terminated instance {id}"), format!("it stopped ({status})"), "successful");
            }
            state => {
                registrar.deregister(&s.cfg.target_group, inst.view.addr);
                if state == InstanceState::Pending {
                    note_launch_failure(local);
                    s.new_instance_failed(inst.view.launch_version);
                }
                s.record(
                    format!("Instance {id} exited unexpectedly ({status}) while {state:?}"),
                    "the process ended without being asked to; a replacement will be launched".into(),
                    "failed",
                );
            }
        }
    }
}

/// Shows container ids in the view once Docker has assigned them.
fn note_container_ids(handle: &GroupHandle, local: &Local) {
    let mut s = handle.lock();
    for i in s.instances.iter_mut().filter(|i| i.view.container.is_none() && i.view.pid.is_none()) {
        i.view.container =
            local.runners.get(&i.view.id).and_then(Runner::container_id).map(|c| c.chars().take(12).collect());
    }
}

/// An address not known yet: a Swarm task's node and port are Swarm's choice.
pub(crate) const UNPLACED: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);

/// Registers instances whose engine chose where they run (Swarm) once it says where, and moves
/// the registration if that changes.
fn note_addresses(handle: &GroupHandle, registrar: &dyn Registrar, local: &Local) {
    let mut s = handle.lock();
    let tg = s.cfg.target_group.clone();
    let mut placed = Vec::new();
    let live = |i: &&mut Instance| {
        matches!(i.view.state, InstanceState::Pending | InstanceState::InService | InstanceState::Unhealthy)
    };
    for i in s.instances.iter_mut().filter(live) {
        let Some(addr) = local.runners.get(&i.view.id).and_then(Runner::addr) else { continue };
        if addr == i.view.addr {
            continue;
        }
        if i.view.addr != UNPLACED {
            registrar.deregister(&tg, i.view.addr);
        }
        if let Err(e) = registrar.register(&tg, addr, i.view.zone.as_deref()) {
            tracing::warn!(instance = %i.view.id, %addr, error = %e, "registering a placed instance failed");
            continue;
        }
        i.view.addr = addr;
        placed.push((i.view.id.clone(), addr));
    }
    for (id, addr) in placed {
        tracing::info!(group = %s.cfg.name, instance = %id, %addr, "instance placed");
    }
}

fn note_launch_failure(local: &mut Local) {
    local.launch_failures += 1;
    let backoff = Duration::from_secs(1u64 << local.launch_failures.min(6)).min(MAX_BACKOFF);
    local.next_launch = Instant::now() + backoff;
}

/// Follows the edge's health checks: pending → in service; unhealthy after the grace period →
/// replaced (drained, then stopped).
fn watch_health(handle: &GroupHandle, registrar: &dyn Registrar, local: &mut Local) {
    let mut s = handle.lock();
    let grace = s.cfg.health_check_grace;
    let tg = s.cfg.target_group.clone();
    let mut replace = Vec::new();
    let mut changes = Vec::new();
    for i in s.live() {
        if i.view.addr == UNPLACED {
            // Not placed yet: it cannot be checked; past the grace period it counts as failed.
            if since(i.launched) >= grace {
                replace.push((i.view.id.clone(), i.view.addr, true, i.view.launch_version));
            }
            continue;
        }
        let Some(status) = registrar.status(&tg, i.view.addr) else {
            // The edge lost it (a reload recreated the group): register it again.
            if let Err(e) = registrar.register(&tg, i.view.addr, i.view.zone.as_deref()) {
                tracing::warn!(instance = %i.view.id, error = %e, "re-registering failed");
            }
            continue;
        };
        let past_grace = since(i.launched) >= grace;
        let next = match (status.health, i.view.state) {
            (TargetHealth::Healthy, InstanceState::Pending) => Some(InstanceState::InService),
            (TargetHealth::Healthy, InstanceState::Unhealthy) => Some(InstanceState::InService),
            (TargetHealth::Unhealthy, InstanceState::InService) => Some(InstanceState::Unhealthy),
            _ => None,
        };
        if let Some(n) = next {
            changes.push((i.view.id.clone(), i.view.state, n, since(i.launched)));
        }
        let failing = status.health == TargetHealth::Unhealthy
            || (status.health == TargetHealth::Initial && i.view.state == InstanceState::Pending);
        if failing && past_grace {
            replace.push((
                i.view.id.clone(),
                i.view.addr,
                i.view.state == InstanceState::Pending,
                i.view.launch_version,
            ));
        }
    }
    for (id, from, to, age) in changes {
        s.set_state(&id, to);
        if to == InstanceState::InService && from == InstanceState::Pending {
            local.launch_failures = 0;
            s.record(
                format!("Instance {id} is in service"),
                format!("passed health checks {:.1}s after launch", age.as_secs_f64()),
                "successful",
            );
        } else {
            tracing::info!(group = %s.cfg.name, instance = %id, from = ?from, to = ?to, "instance health changed");
        }
    }
    for (id, addr, never_healthy, version) in replace {
        registrar.deregister(&tg, addr);
        s.set_state(&id, InstanceState::Draining);
        if never_healthy {
            note_launch_failure(local);
            s.new_instance_failed(version);
        }
        let why = if never_healthy { "never passed health checks" } else { "failed health checks" };
        s.record(
            format!("Replacing instance {id}"),
            format!("it {why} after the {:?} grace period", grace),
            "in_progress",
        );
    }
}

/// Draining → terminating (once the edge has let go) → killed (after the stop timeout).
fn advance_stops(handle: &GroupHandle, registrar: &dyn Registrar, local: &mut Local) {
    let mut s = handle.lock();
    let tg = s.cfg.target_group.clone();
    let stop_timeout = s.cfg.stop_timeout;
    let stopping = s.stopping;
    let mut to_terminate = Vec::new();
    for i in &s.instances {
        if i.view.state == InstanceState::Draining
            && (stopping || registrar.status(&tg, i.view.addr).is_none() || since(i.state_since) > MAX_DRAIN)
        {
            to_terminate.push(i.view.id.clone());
        }
    }
    for id in to_terminate {
        s.set_state(&id, InstanceState::Terminating);
        match local.runners.get(&id) {
            Some(runner) => {
                runner.terminate();
                local.term_deadline.insert(id, Instant::now() + stop_timeout);
            }
            None => s.instances.retain(|i| i.view.id != id),
        }
    }
    for (id, deadline) in &local.term_deadline {
        if Instant::now() >= *deadline {
            if let Some(runner) = local.runners.get_mut(id) {
                if runner.pid().is_some() {
                    tracing::warn!(group = %s.cfg.name, instance = %id, "did not stop after {stop_timeout:?}; sending SIGKILL");
                }
                runner.kill();
            }
        }
    }
}

/// Applies scheduled actions that came due (their new bounds last until the next one).
fn run_schedules(handle: &GroupHandle, local: &mut Local) {
    let due: Vec<_> = local.scheduler.due(SystemTime::now()).into_iter().cloned().collect();
    if due.is_empty() {
        return;
    }
    let mut s = handle.lock();
    for sc in due {
        let (min, max, desired) = schedule::apply(&sc, s.cfg.min, s.cfg.max, s.desired);
        let what = format!(
            "Scheduled action: min {} -> {min}, max {} -> {max}, desired {} -> {desired}",
            s.cfg.min, s.cfg.max, s.desired
        );
        s.cfg.min = min;
        s.cfg.max = max;
        s.desired = desired;
        s.record(what, format!("cron \"{}\" in {}", sc.cron_text, sc.timezone), "successful");
        if let Some(sv) = local.saver.as_mut() {
            sv.scheduled = Some((min, max, desired));
            sv.actions += 1;
        }
    }
}

/// Samples instance metrics and lets the policies move `desired`.
fn evaluate_policies(handle: &GroupHandle, registrar: &dyn Registrar, local: &mut Local) {
    let mut s = handle.lock();
    local.next_metrics = Instant::now() + s.cfg.metrics_interval;
    let warmup = s.cfg.instance_warmup;
    let tg = s.cfg.target_group.clone();
    let (mut cpu_sum, mut cpu_n, mut rpm_sum, mut rpm_n, mut flight_sum, mut mem_sum, mut ready) =
        (0.0, 0u32, 0.0, 0u32, 0.0, 0.0, 0u32);
    for i in s.instances.iter_mut() {
        let id = i.view.id.clone();
        if let Some((cpu, mem)) = local.runners.get_mut(&id).and_then(Runner::usage) {
            i.view.cpu = cpu.map(|c| (c * 10.0).round() / 10.0);
            i.view.memory_bytes = mem;
        }
        let status = registrar.status(&tg, i.view.addr);
        let now = Instant::now();
        let mut rpm = None;
        if let Some(st) = status {
            i.view.in_flight = st.in_flight;
            if let Some((prev, t)) = local.requests.insert(id.clone(), (st.requests, now)) {
                let mins = now.duration_since(t).as_secs_f64() / 60.0;
                if mins > 0.0 {
                    rpm = Some(st.requests.saturating_sub(prev) as f64 / mins);
                }
            }
        }
        if i.view.state != InstanceState::InService || since(i.launched) < warmup {
            continue;
        }
        ready += 1;
        if let Some(c) = i.view.cpu {
            cpu_sum += c;
            cpu_n += 1;
        }
        if let Some(r) = rpm {
            rpm_sum += r;
            rpm_n += 1;
        }
        flight_sum += i.view.in_flight as f64;
        mem_sum += i.view.memory_bytes as f64;
    }
    if s.stopping {
        return;
    }
    let avg = |sum: f64, n: u32| (n > 0).then(|| sum / n as f64);
    let window = s.cfg.metrics_interval.as_secs_f64().max(1.0);
    let source = s.metrics.clone();
    let from_watch = |name: &str, labels: &[(&str, &str)]| {
        let labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        source.as_ref().and_then(|src| src(name, &labels, window))
    };
    let metric = |name: &str| match name {
        CPU => avg(cpu_sum, cpu_n),
        REQUESTS_PER_TARGET => avg(rpm_sum, rpm_n),
        "in_flight" => avg(flight_sum, ready),
        "memory" => avg(mem_sum, ready),
        // Milliseconds, from the edge's latency for this group's target group.
        LATENCY_P95 => from_watch("http_latency_p95", &[("target_group", &tg)]).map(|s| s * 1000.0),
        // Any other name: a series of the watch (summed over its label sets).
        other => from_watch(other, &[]),
    };
    let obs = Observation {
        now: local.started.elapsed(),
        capacity: s.desired,
        min: s.cfg.min,
        max: s.cfg.max,
        ready,
        metric: &metric,
    };
    let before = local.scaler.last_step_action();
    let decision = local.scaler.evaluate(&obs);
    if local.scaler.last_step_action() != before {
        local.last_step_unix_ms = Some(crate::group::coordinate::unix_ms(SystemTime::now()));
    }
    let Some(decision) = decision else { return };
    let mut desired = decision.desired;
    if desired > s.desired {
        if let Some(reason) = s.scale_out_blocked() {
            if s.blocked_noted.is_none_or(|t| since(t) > Duration::from_secs(300)) {
                s.blocked_noted = Some(Instant::now());
                let from = s.desired;
                s.record(
                    format!("Scale-out from {from} to {desired} blocked by the budget"),
                    format!("{}; {reason}", decision.cause),
                    "failed",
                );
            }
            desired = s.desired;
        }
    }
    if desired != s.desired {
        let from = s.desired;
        s.desired = desired;
        s.record(format!("Changing desired capacity from {from} to {desired}"), decision.cause, "successful");
    }
}

/// Advances a running instance refresh by one decision.
fn step_refresh(handle: &GroupHandle, registrar: &dyn Registrar) {
    let mut s = handle.lock();
    let Some(mut r) = s.refresh.take() else { return };
    if !r.view.status.is_active() || s.stopping {
        s.refresh = Some(r);
        return;
    }
    let target = r.target;
    let old = s.outdated(target);
    let new_pending =
        s.live().filter(|i| i.view.launch_version == target && i.view.state != InstanceState::InService).count() as u32;
    let in_service = s.live().filter(|i| i.view.state == InstanceState::InService).count() as u32;
    let id = r.view.id;
    match r.step(old, new_pending, in_service, s.desired) {
        Step::Wait => {}
        Step::Replace(n) => {
            let live: Vec<&Instance> = s.live().filter(|i| i.view.launch_version != target).collect();
            let victims: Vec<(String, SocketAddr, u32)> = pick_victims(&live, n, &s.cfg.termination_policy)
                .into_iter()
                .map(|i| (i.view.id.clone(), i.view.addr, i.view.launch_version))
                .collect();
            let tg = s.cfg.target_group.clone();
            for (vid, addr, v) in victims {
                registrar.deregister(&tg, addr);
                s.set_state(&vid, InstanceState::Draining);
                s.record(
                    format!("Refresh {id}: replacing instance {vid} (launch template v{v} -> v{target})"),
                    format!("instance refresh, {} % complete", r.view.percent_complete),
                    "in_progress",
                );
            }
        }
        Step::Done => {
            let (status, what) = if r.view.status == RefreshStatus::RollingBack {
                (RefreshStatus::RolledBack, format!("rolled back to launch template v{target}"))
            } else {
                (RefreshStatus::Successful, format!("every instance runs launch template v{target}"))
            };
            r.finish(status, None);
            s.record(format!("Refresh {id} finished"), what, "successful");
        }
        Step::RollBack => {
            let from = r.view.from_version;
            r.failures = 0;
            r.target = from;
            r.view.status = RefreshStatus::RollingBack;
            r.view.reason = Some(format!("new instances on launch template v{} failed", r.view.to_version));
            if let Some(t) = s.templates.get(&from).cloned() {
                s.cfg.launch = t;
            }
            s.launch_version = from;
            s.record(
                format!("Refresh {id}: rolling back to launch template v{from}"),
                format!(
                    "new instances on launch template v{} failed to launch or to pass health checks",
                    r.view.to_version
                ),
                "failed",
            );
        }
        Step::Fail(reason) => {
            s.record(format!("Refresh {id} failed"), reason.clone(), "failed");
            r.finish(RefreshStatus::Failed, Some(reason));
        }
    }
    s.refresh = Some(r);
}

/// Launches or retires instances to match desired. Returns true when the group has stopped.
fn resize(handle: &GroupHandle, registrar: &dyn Registrar, local: &mut Local) -> bool {
    let mut s = handle.lock();
    accrue_budget(&mut s);
    if s.stopping {
        let tg = s.cfg.target_group.clone();
        let live: Vec<_> = s.live().map(|i| (i.view.id.clone(), i.view.addr)).collect();
        for (id, addr) in live {
            registrar.deregister(&tg, addr);
            s.set_state(&id, InstanceState::Draining);
        }
        return s.instances.is_empty();
    }
    let live = s.live().count() as u32;
    if live > s.desired {
        let excess = (live - s.desired) as usize;
        retire(&mut s, registrar, excess);
    } else if live < s.desired && Instant::now() >= local.next_launch {
        for _ in 0..(s.desired - live) {
            if !launch(&mut s, registrar, local, live) {
                break;
            }
        }
    }
    false
}

/// Bills every instance that exists (launch to exit, as a cloud bills) and raises alerts.
fn accrue_budget(s: &mut GroupState) {
    let billed = s.instances.len() as u32;
    let Some(b) = s.budget.as_mut() else { return };
    let crossed = b.accrue(billed);
    let view = b.view();
    for pct in crossed {
        tracing::warn!(group = %s.cfg.name, percent = pct, spent = view.spent, monthly = view.monthly, "budget alert");
        s.record(
            format!("Budget alert: {pct} % of the monthly budget reached"),
            format!("spent {:.2} of {:.2} this month; forecast {:.2}", view.spent, view.monthly, view.forecast),
            "warning",
        );
    }
}

fn retire(s: &mut GroupState, registrar: &dyn Registrar, n: usize) {
    let live: Vec<&Instance> = s.live().collect();
    let victims: Vec<(String, SocketAddr)> = pick_victims(&live, n, &s.cfg.termination_policy)
        .into_iter()
        .map(|i| (i.view.id.clone(), i.view.addr))
        .collect();
    let tg = s.cfg.target_group.clone();
    let desired = s.desired;
    for (id, addr) in victims {
        registrar.deregister(&tg, addr);
        s.set_state(&id, InstanceState::Draining);
        s.record(
            format!("Draining instance {id} before it stops"),
            format!("desired capacity is {desired}: scaling in"),
            "in_progress",
        );
    }
}

/// Starts one instance and registers it; false (with backoff) when the launch fails.
fn launch(s: &mut GroupState, registrar: &dyn Registrar, local: &mut Local, live: u32) -> bool {
    let seq = s.next_seq;
    s.next_seq += 1;
    let id = format!("{}-{seq:04}", s.cfg.name);
    let zone = pick_zone(s);
    let taken: Vec<u16> = s.instances.iter().map(|i| i.view.addr.port()).collect();
    let cause = format!("desired capacity {} but {live} instances running", s.desired);
    // Swarm publishes each task on a port of whichever node runs it: nothing to pick here.
    let placed_by_swarm = matches!(&s.cfg.launch.driver, flotilla_config::LaunchDriver::Docker { swarm: Some(_), .. });
    let port = match placed_by_swarm {
        true => Ok(0),
        false => process::free_port(&|p| taken.contains(&p)),
    };
    let port = match port {
        Ok(p) => p,
        Err(e) => {
            note_launch_failure(local);
            s.record(format!("Launching instance {id} failed"), format!("no free port: {e}"), "failed");
            return false;
        }
    };
    let scope = local.scope.clone();
    let cx = LaunchContext {
        placeholders: Placeholders { port, instance: &id, group: &s.cfg.name, zone: zone.as_deref() },
        group: &s.cfg.name,
        launch_version: s.launch_version,
        stop_timeout: s.cfg.stop_timeout,
        stats_every: s.cfg.metrics_interval,
        scope: &scope,
    };
    let runner = match Runner::start(&s.cfg.launch, cx) {
        Ok(r) => r,
        Err(e) => {
            note_launch_failure(local);
            let v = s.launch_version;
            s.new_instance_failed(v);
            s.record(format!("Launching instance {id} failed"), format!("{cause}; {e}"), "failed");
            return false;
        }
    };
    let addr = if placed_by_swarm { UNPLACED } else { SocketAddr::from((Ipv4Addr::LOCALHOST, port)) };
    if !placed_by_swarm {
        if let Err(e) = registrar.register(&s.cfg.target_group, addr, zone.as_deref()) {
            note_launch_failure(local);
            s.record(format!("Launching instance {id} failed"), format!("cannot register {addr}: {e}"), "failed");
            return false; // dropping the child kills it
        }
    }
    let pid = runner.pid();
    local.runners.insert(id.clone(), runner);
    let place = if placed_by_swarm { "as a Swarm service".to_string() } else { format!("on {addr}") };
    s.record(
        format!(
            "Launching instance {id} {place}{}",
            zone.as_deref().map(|z| format!(" in zone {z}")).unwrap_or_default()
        ),
        format!("{cause} (launch template v{})", s.launch_version),
        "successful",
    );
    let v = s.launch_version;
    s.instances.push(Instance::pending(id, addr, zone, v, pid, seq));
    true
}

/// `n` of `among` to take out, by the termination policy.
fn pick_victims<'a>(
    among: &[&'a Instance],
    n: usize,
    rules: &[flotilla_config::TerminationPolicy],
) -> Vec<&'a Instance> {
    let cands: Vec<Candidate<'_>> = among
        .iter()
        .map(|i| Candidate {
            zone: i.view.zone.as_deref(),
            launch_version: i.view.launch_version,
            seq: i.seq,
            in_service: i.view.state == InstanceState::InService,
        })
        .collect();
    termination::pick(&cands, n, rules).into_iter().map(|k| among[k]).collect()
}

/// The configured zone with the fewest live instances (first listed wins ties).
fn pick_zone(s: &GroupState) -> Option<String> {
    s.cfg.zones.iter().min_by_key(|z| s.live().filter(|i| i.view.zone.as_deref() == Some(z.as_str())).count()).cloned()
}

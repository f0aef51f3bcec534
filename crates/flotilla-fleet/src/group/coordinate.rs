//! A swarm group in a cluster: one node leads its control loop (a Redis lease, through the
//! binary's [`crate::Coordinator`]), the others follow.
//!
//! The leader reconciles, scales and refreshes as a single node would, and after every change
//! saves the group's decisions — desired capacity, the next instance number, the launch template
//! version, the activity history, the last step action (cooldown) and its scaling policies' alarm
//! datapoints and stabilization windows — with its fencing token, so a deposed leader's late save
//! is refused. A node that becomes leader loads that state and adopts the services that exist in
//! Swarm (the source of truth for what runs) instead of launching new ones, so failover neither
//! doubles nor loses an instance. Followers register the services' ports in their own edge, so
//! every node serves the group.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use super::instances::UNPLACED;
use super::view::{Activity, GroupState, Instance, Role};
use super::Reconciler;
use crate::engine::Engine;
use crate::policy::ScalerSaved;
use crate::runner::Runner;
use crate::Coordinator;

/// How often a swarm group's leader compares its instances with the services Swarm runs.
const SWARM_CHECK_EVERY: Duration = Duration::from_secs(5);

/// What the next leader needs to carry on.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct Saved {
    pub desired: u32,
    pub next_seq: u64,
    pub launch_version: u32,
    pub next_activity: u64,
    pub activity: Vec<SavedActivity>,
    /// Unix milliseconds of the last step-policy action: the next leader honours its cooldown.
    #[serde(default)]
    pub last_step_unix_ms: Option<u64>,
    /// The scaling policies' alarm datapoints and states and their stabilization windows.
    #[serde(default)]
    pub policies: Option<ScalerSaved>,
}

pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct SavedActivity {
    pub id: u64,
    pub time: String,
    pub description: String,
    pub cause: String,
    pub status: String,
}

fn static_status(s: &str) -> &'static str {
    match s {
        "successful" => "successful",
        "failed" => "failed",
        "in_progress" => "in_progress",
        "cancelled" => "cancelled",
        _ => "successful",
    }
}

impl GroupState {
    pub(crate) fn snapshot(&self, last_step_unix_ms: Option<u64>, policies: Option<ScalerSaved>) -> String {
        let saved = Saved {
            last_step_unix_ms,
            policies,
            desired: self.desired,
            next_seq: self.next_seq,
            launch_version: self.launch_version,
            next_activity: self.next_activity,
            activity: self
                .activity
                .iter()
                .map(|a| SavedActivity {
                    id: a.id,
                    time: a.time.clone(),
                    description: a.description.clone(),
                    cause: a.cause.clone(),
                    status: a.status.to_string(),
                })
                .collect(),
        };
        serde_json::to_string(&saved).unwrap_or_default()
    }

    /// Applies a previous leader's state; returns its last step action (unix ms) and its
    /// policies' state, which live beside the group state in the loop.
    fn restore(&mut self, text: &str) -> Option<(Option<u64>, Option<ScalerSaved>)> {
        let Ok(saved) = serde_json::from_str::<Saved>(text) else {
            tracing::warn!(group = %self.cfg.name, "saved group state unreadable; starting from the config");
            return None;
        };
        self.desired = saved.desired.clamp(self.cfg.min, self.cfg.max);
        self.next_seq = self.next_seq.max(saved.next_seq);
        self.next_activity = self.next_activity.max(saved.next_activity);
        if saved.launch_version > self.launch_version && self.templates.contains_key(&saved.launch_version) {
            self.launch_version = saved.launch_version;
        }
        self.activity = saved
            .activity
            .into_iter()
            .map(|a| Activity {
                id: a.id,
                time: a.time,
                description: a.description,
                cause: a.cause,
                status: static_status(&a.status),
            })
            .collect();
        Some((saved.last_step_unix_ms, saved.policies))
    }
}

/// A swarm group in a cluster: this node's part in the election for its loop.
pub(super) struct Lead {
    coordinator: Arc<dyn Coordinator>,
    /// `Some(fencing token)` while this node leads.
    rx: watch::Receiver<Option<u64>>,
    /// The token this loop leads under (it follows the receiver at the start of each pass).
    leading: Option<u64>,
    /// Addresses this node registered while following.
    followed: HashSet<SocketAddr>,
    /// The state last saved for the next leader (nothing is written while it stays the same).
    last_saved: String,
    next_swarm_check: Instant,
    /// The election ended (the cluster is shutting down): its receiver says no more.
    closed: bool,
}

/// What a pass does after the lease was looked at.
pub(super) enum Lease {
    /// This node leads: the pass carries on as a single node's would.
    Lead,
    /// Another node leads: this node followed (registered the services in its edge).
    Followed,
    /// The group is stopping: let go of the services (the next leader adopts them), and stop.
    Stop,
}

impl Lead {
    pub fn new(coordinator: Arc<dyn Coordinator>, group: &str) -> Self {
        let rx = coordinator.leadership(group);
        Self {
            coordinator,
            rx,
            leading: None,
            followed: HashSet::new(),
            last_saved: String::new(),
            next_swarm_check: Instant::now(),
            closed: false,
        }
    }

    /// Waits until the lease changes hands (never, once the election has ended).
    pub async fn changed(&mut self) -> Option<u64> {
        if self.closed {
            return std::future::pending().await;
        }
        if self.rx.changed().await.is_err() {
            self.closed = true;
            return std::future::pending().await;
        }
        *self.rx.borrow()
    }
}

impl Reconciler {
    /// The start of a pass for a swarm group in a cluster: take over or step down as the lease
    /// says, follow while another node leads, and let go when stopping.
    pub(super) async fn follow_the_lease(&mut self) -> Lease {
        let Some(lead) = self.lead.as_mut() else { return Lease::Lead };
        let token = *lead.rx.borrow_and_update();
        match (token, lead.leading) {
            (Some(t), l) if l != Some(t) => {
                let saved = lead.coordinator.load(&self.name).await;
                self.take_over(saved, t).await;
                if let Some(lead) = self.lead.as_mut() {
                    lead.followed.clear();
                    lead.last_saved.clear();
                    lead.leading = Some(t);
                }
            }
            (None, Some(_)) => self.step_down(),
            _ => {}
        }
        let leading = self.lead.as_ref().and_then(|l| l.leading).is_some();
        if self.handle.lock().stopping {
            // Shutting down a node must not stop the group's services: the next leader adopts
            // them.
            if leading {
                self.step_down();
            }
            return Lease::Stop;
        }
        self.handle.lock().role = if leading { Role::Leader } else { Role::Follower };
        if leading {
            return Lease::Lead;
        }
        self.follow().await;
        Lease::Followed
    }

    /// Becoming leader: load the previous leader's decisions, then adopt every service of the
    /// group that exists in Swarm.
    async fn take_over(&mut self, saved: Option<String>, token: u64) {
        let existing = match crate::swarm::existing(&Engine::default(), &self.handle.scope, &self.name).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(group = %self.name, error = %e, "cannot list the group's Swarm services; adopting none");
                Vec::new()
            }
        };
        // Services the previous leader had marked draining were on their way out: finish the job.
        let (draining, existing): (Vec<_>, Vec<_>) = existing.into_iter().partition(|e| e.draining);
        for e in draining {
            crate::swarm::remove(&Engine::default(), &e.service).await;
        }
        let handle = self.handle.clone();
        let mut s = handle.lock();
        if let Some((last_step, policies)) = saved.and_then(|text| s.restore(&text)) {
            let p = &mut self.policies;
            if let Some(last_step) = last_step {
                // The previous leader's cooldown still runs: place its last action on this node's
                // policy clock.
                let ago = Duration::from_millis(unix_ms(SystemTime::now()).saturating_sub(last_step));
                if ago < s.cfg.cooldown {
                    // Before this node's clock began, it counts as its start: the wait is at most
                    // the whole cooldown from now, never shorter than the real one.
                    let at = p.started.elapsed().checked_sub(ago).unwrap_or_default();
                    p.scaler.set_last_step_action(Some(at));
                }
                p.last_step_unix_ms = Some(last_step);
            }
            // Alarms keep their datapoints (a breach three periods old still counts toward four)
            // and target tracking its stabilization window.
            if let Some(saved) = policies {
                p.scaler.import(&saved, p.epoch_ms);
            }
        }
        let adopted = self.adopt(&mut s, existing);
        let desired = s.desired;
        s.record(
            format!("Took over the group's control loop (lease token {token})"),
            format!("adopted {adopted} running Swarm services; desired capacity {desired}"),
            "successful",
        );
    }

    /// While leading, every [`SWARM_CHECK_EVERY`]: services of the group this node does not know
    /// (a deposed leader's late launch) are adopted, so none runs unmanaged; scale-in then
    /// retires any beyond desired.
    pub(super) async fn check_swarm(&mut self) {
        let Some(lead) = self.lead.as_mut().filter(|l| l.leading.is_some()) else { return };
        if Instant::now() < lead.next_swarm_check {
            return;
        }
        lead.next_swarm_check = Instant::now() + SWARM_CHECK_EVERY;
        let Ok(existing) = crate::swarm::existing(&Engine::default(), &self.handle.scope, &self.name).await else {
            return;
        };
        let unknown: Vec<_> =
            existing.into_iter().filter(|e| !e.draining && !self.runners.contains_key(&e.instance)).collect();
        if unknown.is_empty() {
            return;
        }
        let handle = self.handle.clone();
        let mut s = handle.lock();
        let ids: Vec<String> = unknown.iter().map(|e| e.instance.clone()).collect();
        let n = self.adopt(&mut s, unknown);
        if n > 0 {
            s.record(
                format!("Adopted {n} Swarm services this leader did not launch ({})", ids.join(", ")),
                "found in Swarm, not in this node's state (a deposed leader's late launch?)".into(),
                "successful",
            );
        }
    }

    /// Takes the services into the group's state and this node's edge.
    fn adopt(&mut self, s: &mut GroupState, existing: Vec<crate::swarm::Existing>) -> usize {
        let tg = s.cfg.target_group.clone();
        let mut adopted = 0;
        for e in existing {
            if self.runners.contains_key(&e.instance) {
                continue;
            }
            let seq = e.instance.rsplit('-').next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
            s.next_seq = s.next_seq.max(seq + 1);
            let addr = e.addr.unwrap_or(UNPLACED);
            let (stop_timeout, stats_every) = (s.cfg.stop_timeout, s.cfg.metrics_interval);
            let container = crate::swarm::adopt(
                Engine::default(),
                e.service.clone(),
                e.instance.clone(),
                stop_timeout,
                stats_every,
            );
            // A task not running yet is registered once Swarm says where it runs (`note_addresses`).
            if addr != UNPLACED {
                if let Err(err) = self.registrar.register(&tg, addr, None) {
                    tracing::warn!(instance = %e.instance, error = %err, "registering an adopted instance failed");
                }
            }
            self.runners.insert(e.instance.clone(), Runner::Docker(container));
            s.instances.push(Instance::pending(e.instance.clone(), addr, None, e.launch_version, None, seq));
            adopted += 1;
        }
        adopted
    }

    /// Another node leads now: let go of the instances (their services keep running) and forget
    /// them.
    fn step_down(&mut self) {
        for runner in self.runners.values() {
            if let Runner::Docker(c) = runner {
                c.detach();
            }
        }
        self.runners.clear();
        self.served.clear();
        self.term_deadline.clear();
        if let Some(lead) = self.lead.as_mut() {
            lead.leading = None;
        }
        let mut s = self.handle.lock();
        s.instances.clear();
        s.record(
            "Stepped down from the group's control loop".into(),
            "another node holds the lease".into(),
            "successful",
        );
    }

    /// A follower registers the group's services in its own edge (and drops the ones gone), so
    /// every node of the cluster serves the group.
    async fn follow(&mut self) {
        let tg = self.handle.lock().cfg.target_group.clone();
        let Ok(existing) = crate::swarm::existing(&Engine::default(), &self.handle.scope, &self.name).await else {
            return;
        };
        let Some(lead) = self.lead.as_mut() else { return };
        // Services marked draining are on their way out: stop routing to them.
        let now: HashSet<SocketAddr> = existing.iter().filter(|e| !e.draining).filter_map(|e| e.addr).collect();
        for addr in now.difference(&lead.followed) {
            if let Err(e) = self.registrar.register(&tg, *addr, None) {
                tracing::warn!(group = %self.name, %addr, error = %e, "registering a followed instance failed");
            }
        }
        for addr in lead.followed.difference(&now) {
            self.registrar.deregister(&tg, *addr);
        }
        lead.followed = now;
    }

    /// The end of a leader's pass: its decisions, saved under its fencing token for the next
    /// leader; a refused save means another node leads now.
    pub(super) async fn save_for_next_leader(&mut self) {
        let Some(lead) = self.lead.as_ref() else { return };
        let Some(token) = lead.leading else { return };
        let policies = Some(self.policies.scaler.export(self.policies.epoch_ms));
        let snapshot = self.handle.lock().snapshot(self.policies.last_step_unix_ms, policies);
        if snapshot == lead.last_saved {
            return;
        }
        match lead.coordinator.save(&self.name, token, snapshot.clone()).await {
            Ok(true) => {
                if let Some(lead) = self.lead.as_mut() {
                    lead.last_saved = snapshot;
                }
            }
            Ok(false) => {
                tracing::warn!(group = %self.name, token, "the group's state save was refused: another node leads now");
                self.step_down();
            }
            Err(e) => tracing::debug!(group = %self.name, error = %e, "saving the group's state failed; retrying"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activity_statuses_survive_the_round_trip() {
        assert_eq!(static_status("failed"), "failed");
        assert_eq!(static_status("in_progress"), "in_progress");
        assert_eq!(static_status("weird"), "successful");
        let saved = Saved {
            desired: 3,
            next_seq: 7,
            launch_version: 2,
            next_activity: 9,
            activity: vec![],
            last_step_unix_ms: Some(1_795_000_000_000),
            policies: Some(ScalerSaved {
                policies: vec![crate::policy::PolicySaved::Step {
                    metric: "cpu".into(),
                    state: flotilla_watch::AlarmState::Alarm,
                    datapoints: vec![Some(91.0), None, Some(88.5)],
                }],
            }),
        };
        let text = serde_json::to_string(&saved).unwrap();
        assert_eq!(serde_json::from_str::<Saved>(&text).unwrap(), saved);
    }
}

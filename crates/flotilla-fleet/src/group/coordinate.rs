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
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::{GroupHandle, GroupState, Instance, Local};
use crate::docker::{Container, Docker, Spec};
use crate::policy::ScalerSaved;
use crate::runner::Runner;
use crate::Registrar;

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
            .map(|a| super::Activity {
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

/// Becoming leader: load the previous leader's decisions, then adopt every service of the group
/// that exists in Swarm.
pub(super) async fn take_over(
    handle: &GroupHandle,
    registrar: &dyn Registrar,
    local: &mut Local,
    saved: Option<String>,
    token: u64,
) {
    let name = handle.lock().cfg.name.clone();
    let existing = match crate::swarm::existing(&Docker::default(), &handle.scope, &name).await {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(group = %name, error = %e, "cannot list the group's Swarm services; adopting none");
            Vec::new()
        }
    };
    // Services the previous leader had marked draining were on their way out: finish the job.
    let (draining, existing): (Vec<_>, Vec<_>) = existing.into_iter().partition(|e| e.draining);
    for e in draining {
        let _ = Docker::default().call("DELETE", &format!("/services/{}", e.service), None).await;
    }
    let mut s = handle.lock();
    if let Some((last_step, policies)) = saved.and_then(|text| s.restore(&text)) {
        if let Some(last_step) = last_step {
            // The previous leader's cooldown still runs: place its last action on this node's
            // policy clock.
            let ago = std::time::Duration::from_millis(unix_ms(SystemTime::now()).saturating_sub(last_step));
            if ago < s.cfg.cooldown {
                // Before this node's clock began, it counts as its start: the wait is at most the
                // whole cooldown from now, never shorter than the real one.
                let at = local.started.elapsed().checked_sub(ago).unwrap_or_default();
                local.scaler.set_last_step_action(Some(at));
            }
            local.last_step_unix_ms = Some(last_step);
        }
        // Alarms keep their datapoints (a breach three periods old still counts toward four)
        // and target tracking its stabilization window.
        if let Some(p) = policies {
            local.scaler.import(&p, local.epoch_ms);
        }
    }
    let adopted = adopt(&mut s, registrar, local, existing);
    let desired = s.desired;
    s.record(
        format!("Took over the group's control loop (lease token {token})"),
        format!("adopted {adopted} running Swarm services; desired capacity {desired}"),
        "successful",
    );
}

/// While leading: services of the group this node does not know (a deposed leader's late
/// launch) are adopted, so none runs unmanaged; scale-in then retires any beyond desired.
pub(super) async fn reconcile(handle: &GroupHandle, registrar: &dyn Registrar, local: &mut Local) {
    let name = handle.lock().cfg.name.clone();
    let Ok(existing) = crate::swarm::existing(&Docker::default(), &handle.scope, &name).await else { return };
    let unknown: Vec<_> =
        existing.into_iter().filter(|e| !e.draining && !local.runners.contains_key(&e.instance)).collect();
    if unknown.is_empty() {
        return;
    }
    let mut s = handle.lock();
    let ids: Vec<String> = unknown.iter().map(|e| e.instance.clone()).collect();
    let n = adopt(&mut s, registrar, local, unknown);
    if n > 0 {
        s.record(
            format!("Adopted {n} Swarm services this leader did not launch ({})", ids.join(", ")),
            "found in Swarm, not in this node's state (a deposed leader's late launch?)".into(),
            "successful",
        );
    }
}

/// Takes the services into the group's state and this node's edge.
fn adopt(
    s: &mut GroupState,
    registrar: &dyn Registrar,
    local: &mut Local,
    existing: Vec<crate::swarm::Existing>,
) -> usize {
    let tg = s.cfg.target_group.clone();
    let mut adopted = 0;
    for e in existing {
        if local.runners.contains_key(&e.instance) {
            continue;
        }
        let seq = e.instance.rsplit('-').next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
        s.next_seq = s.next_seq.max(seq + 1);
        let addr = e.addr.unwrap_or(super::UNPLACED);
        let spec = Spec {
            name: String::new(),
            image: String::new(),
            command: None,
            env: Default::default(),
            labels: Default::default(),
            container_port: 0,
            host_port: 0,
            cpus: None,
            memory: None,
            stop_timeout: s.cfg.stop_timeout,
            stats_every: s.cfg.metrics_interval,
            swarm: Some(Vec::new()),
        };
        let runner = Runner::Docker(Container::adopt(Docker::default(), spec, e.service.clone(), e.instance.clone()));
        // A task not running yet is registered once Swarm says where it runs (`note_addresses`).
        if addr != super::UNPLACED {
            if let Err(err) = registrar.register(&tg, addr, None) {
                tracing::warn!(instance = %e.instance, error = %err, "registering an adopted instance failed");
            }
        }
        local.runners.insert(e.instance.clone(), runner);
        s.instances.push(Instance::pending(e.instance.clone(), addr, None, e.launch_version, None, seq));
        adopted += 1;
    }
    adopted
}

/// Another node leads now: let go of the instances (their services keep running) and forget them.
pub(super) fn step_down(handle: &GroupHandle, local: &mut Local) {
    for runner in local.runners.values() {
        if let Runner::Docker(c) = runner {
            c.detach();
        }
    }
    local.runners.clear();
    local.requests.clear();
    local.term_deadline.clear();
    let mut s = handle.lock();
    s.instances.clear();
    s.record("Stepped down from the group's control loop".into(), "another node holds the lease".into(), "successful");
}

/// A follower registers the group's services in its own edge (and drops the ones gone), so
/// every node of the cluster serves the group.
pub(super) async fn follow(handle: &GroupHandle, registrar: &dyn Registrar, followed: &mut HashSet<SocketAddr>) {
    let (name, tg) = {
        let s = handle.lock();
        (s.cfg.name.clone(), s.cfg.target_group.clone())
    };
    let Ok(existing) = crate::swarm::existing(&Docker::default(), &handle.scope, &name).await else { return };
    // Services marked draining are on their way out: stop routing to them.
    let now: HashSet<SocketAddr> = existing.iter().filter(|e| !e.draining).filter_map(|e| e.addr).collect();
    for addr in now.difference(followed) {
        if let Err(e) = registrar.register(&tg, *addr, None) {
            tracing::warn!(group = %name, %addr, error = %e, "registering a followed instance failed");
        }
    }
    for addr in followed.difference(&now) {
        registrar.deregister(&tg, *addr);
    }
    *followed = now;
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

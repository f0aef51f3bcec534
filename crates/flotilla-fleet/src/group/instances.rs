//! Instance lifecycle, read from the drivers and the edge on every tick: exits (expected ones end
//! a termination, others are replaced), where an engine placed an instance, health (pending → in
//! service; unhealthy past the grace period → replaced), and stopping (draining → terminating
//! once the edge lets go → killed after the stop timeout).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::time::Instant;

use super::view::{is_live, since, Instance, InstanceState};
use super::Reconciler;
use crate::registrar::TargetHealth;
use crate::runner::Runner;

/// A draining instance the edge never lets go of is stopped anyway after this.
const MAX_DRAIN: Duration = Duration::from_secs(3600);

/// An address not known yet: a Swarm task's node and port are Swarm's choice.
pub(crate) const UNPLACED: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);

impl Reconciler {
    /// Collects exited instances: expected exits end a termination; others are replaced.
    pub(super) fn reap(&mut self) {
        let mut exited = Vec::new();
        for (id, runner) in self.runners.iter_mut() {
            if let Some(status) = runner.exited() {
                exited.push((id.clone(), status));
            }
        }
        if exited.is_empty() {
            return;
        }
        let mut s = self.handle.lock();
        for (id, status) in exited {
            self.runners.remove(&id);
            self.served.remove(&id);
            self.term_deadline.remove(&id);
            let Some(pos) = s.instances.iter().position(|i| i.view.id == id) else { continue };
            let inst = s.instances.remove(pos);
            match inst.view.state {
                InstanceState::Terminating => {
                    s.record(format!("Terminated instance {id}"), format!("it stopped ({status})"), "successful");
                }
                state => {
                    self.registrar.deregister(&s.cfg.target_group, inst.view.addr);
                    if state == InstanceState::Pending {
                        self.backoff.failed();
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
    pub(super) fn note_container_ids(&self) {
        let mut s = self.handle.lock();
        for i in s.instances.iter_mut().filter(|i| i.view.container.is_none() && i.view.pid.is_none()) {
            i.view.container =
                self.runners.get(&i.view.id).and_then(Runner::container_id).map(|c| c.chars().take(12).collect());
        }
    }

    /// Registers instances whose engine chose where they run (Swarm) once it says where, and
    /// moves the registration if that changes.
    pub(super) fn note_addresses(&self) {
        let mut s = self.handle.lock();
        let tg = s.cfg.target_group.clone();
        let mut placed = Vec::new();
        for i in s.instances.iter_mut().filter(|i| is_live(i.view.state)) {
            let Some(addr) = self.runners.get(&i.view.id).and_then(Runner::addr) else { continue };
            if addr == i.view.addr {
                continue;
            }
            if i.view.addr != UNPLACED {
                self.registrar.deregister(&tg, i.view.addr);
            }
            if let Err(e) = self.registrar.register(&tg, addr, i.view.zone.as_deref()) {
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

    /// Follows the edge's health checks: pending → in service; unhealthy after the grace period
    /// → replaced (drained, then stopped).
    pub(super) fn watch_health(&mut self) {
        let mut s = self.handle.lock();
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
            let Some(status) = self.registrar.status(&tg, i.view.addr) else {
                // The edge lost it (a reload recreated the group): register it again.
                if let Err(e) = self.registrar.register(&tg, i.view.addr, i.view.zone.as_deref()) {
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
                self.backoff.reset();
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
            self.registrar.deregister(&tg, addr);
            s.set_state(&id, InstanceState::Draining);
            if never_healthy {
                self.backoff.failed();
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
    pub(super) fn advance_stops(&mut self) {
        let mut s = self.handle.lock();
        let tg = s.cfg.target_group.clone();
        let stop_timeout = s.cfg.stop_timeout;
        let stopping = s.stopping;
        let mut to_terminate = Vec::new();
        for i in &s.instances {
            if i.view.state == InstanceState::Draining
                && (stopping || self.registrar.status(&tg, i.view.addr).is_none() || since(i.state_since) > MAX_DRAIN)
            {
                to_terminate.push(i.view.id.clone());
            }
        }
        for id in to_terminate {
            s.set_state(&id, InstanceState::Terminating);
            match self.runners.get(&id) {
                Some(runner) => {
                    runner.terminate();
                    self.term_deadline.insert(id, Instant::now() + stop_timeout);
                }
                None => s.instances.retain(|i| i.view.id != id),
            }
        }
        for (id, deadline) in &self.term_deadline {
            if Instant::now() >= *deadline {
                if let Some(runner) = self.runners.get_mut(id) {
                    if runner.pid().is_some() {
                        tracing::warn!(group = %s.cfg.name, instance = %id, "did not stop after {stop_timeout:?}; sending SIGKILL");
                    }
                    runner.kill();
                }
            }
        }
    }
}

/// Instances as the termination policy sees them.
pub(super) fn pick_victims<'a>(
    among: &[&'a Instance],
    n: usize,
    rules: &[flotilla_config::TerminationPolicy],
) -> Vec<&'a Instance> {
    let cands: Vec<crate::termination::Candidate<'_>> = among
        .iter()
        .map(|i| crate::termination::Candidate {
            zone: i.view.zone.as_deref(),
            launch_version: i.view.launch_version,
            seq: i.seq,
            in_service: i.view.state == InstanceState::InService,
        })
        .collect();
    crate::termination::pick(&cands, n, rules).into_iter().map(|k| among[k]).collect()
}

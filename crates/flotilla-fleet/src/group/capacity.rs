//! Capacity: launch or retire instances until the live ones match desired, bill what exists,
//! and back off after failed launches so a broken template does not spin.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::time::Instant;

use super::instances::{pick_victims, UNPLACED};
use super::view::{GroupState, Instance, InstanceState};
use super::Reconciler;
use crate::process::{self, Placeholders};
use crate::runner::{LaunchContext, Runner};

const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Launch-failure backoff: 2 s doubling to [`MAX_BACKOFF`], reset once an instance is in
/// service.
pub(super) struct Backoff {
    failures: u32,
    next_launch: Instant,
}

impl Backoff {
    pub fn new() -> Self {
        Self { failures: 0, next_launch: Instant::now() }
    }

    /// A launch failed (or a new instance died or never became healthy).
    pub fn failed(&mut self) {
        self.failures += 1;
        let backoff = Duration::from_secs(1u64 << self.failures.min(6)).min(MAX_BACKOFF);
        self.next_launch = Instant::now() + backoff;
    }

    /// A new instance came into service.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    fn ready(&self) -> bool {
        Instant::now() >= self.next_launch
    }
}

impl Reconciler {
    /// Launches or retires instances to match desired. Returns true when the group has stopped.
    pub(super) fn resize(&mut self) -> bool {
        let handle = self.handle.clone();
        let mut s = handle.lock();
        accrue_budget(&mut s);
        if s.stopping {
            let tg = s.cfg.target_group.clone();
            let live: Vec<_> = s.live().map(|i| (i.view.id.clone(), i.view.addr)).collect();
            for (id, addr) in live {
                self.registrar.deregister(&tg, addr);
                s.set_state(&id, InstanceState::Draining);
            }
            return s.instances.is_empty();
        }
        let live = s.live().count() as u32;
        if live > s.desired {
            let excess = (live - s.desired) as usize;
            self.retire(&mut s, excess);
        } else if live < s.desired && self.backoff.ready() {
            for _ in 0..(s.desired - live) {
                if !self.launch(&mut s, live) {
                    break;
                }
            }
        }
        false
    }

    fn retire(&self, s: &mut GroupState, n: usize) {
        let live: Vec<&Instance> = s.live().collect();
        let victims: Vec<(String, SocketAddr)> = pick_victims(&live, n, &s.cfg.termination_policy)
            .into_iter()
            .map(|i| (i.view.id.clone(), i.view.addr))
            .collect();
        let tg = s.cfg.target_group.clone();
        let desired = s.desired;
        for (id, addr) in victims {
            self.registrar.deregister(&tg, addr);
            s.set_state(&id, InstanceState::Draining);
            s.record(
                format!("Draining instance {id} before it stops"),
                format!("desired capacity is {desired}: scaling in"),
                "in_progress",
            );
        }
    }

    /// Starts one instance and registers it; false (with backoff) when the launch fails.
    fn launch(&mut self, s: &mut GroupState, live: u32) -> bool {
        let seq = s.next_seq;
        s.next_seq += 1;
        let id = format!("{}-{seq:04}", s.cfg.name);
        let zone = pick_zone(s);
        let taken: Vec<u16> = s.instances.iter().map(|i| i.view.addr.port()).collect();
        let cause = format!("desired capacity {} but {live} instances running", s.desired);
        // Swarm publishes each task on a port of whichever node runs it: nothing to pick here.
        let placed_by_swarm =
            matches!(&s.cfg.launch.driver, flotilla_config::LaunchDriver::Docker { swarm: Some(_), .. });
        let port = match placed_by_swarm {
            true => Ok(0),
            false => process::free_port(&|p| taken.contains(&p)),
        };
        let port = match port {
            Ok(p) => p,
            Err(e) => {
                self.backoff.failed();
                s.record(format!("Launching instance {id} failed"), format!("no free port: {e}"), "failed");
                return false;
            }
        };
        let cx = LaunchContext {
            placeholders: Placeholders { port, instance: &id, group: &s.cfg.name, zone: zone.as_deref() },
            group: &s.cfg.name,
            launch_version: s.launch_version,
            stop_timeout: s.cfg.stop_timeout,
            stats_every: s.cfg.metrics_interval,
            scope: &self.handle.scope,
        };
        let runner = match Runner::start(&s.cfg.launch, cx) {
            Ok(r) => r,
            Err(e) => {
                self.backoff.failed();
                let v = s.launch_version;
                s.new_instance_failed(v);
                s.record(format!("Launching instance {id} failed"), format!("{cause}; {e}"), "failed");
                return false;
            }
        };
        let addr = if placed_by_swarm { UNPLACED } else { SocketAddr::from((Ipv4Addr::LOCALHOST, port)) };
        if !placed_by_swarm {
            if let Err(e) = self.registrar.register(&s.cfg.target_group, addr, zone.as_deref()) {
                self.backoff.failed();
                s.record(format!("Launching instance {id} failed"), format!("cannot register {addr}: {e}"), "failed");
                return false; // dropping the child kills it
            }
        }
        let pid = runner.pid();
        self.runners.insert(id.clone(), runner);
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

/// The configured zone with the fewest live instances (first listed wins ties).
fn pick_zone(s: &GroupState) -> Option<String> {
    s.cfg.zones.iter().min_by_key(|z| s.live().filter(|i| i.view.zone.as_deref() == Some(z.as_str())).count()).cloned()
}

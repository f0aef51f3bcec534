//! The reconcile loop: one [`Reconciler`] per group owns everything the loop keeps (the running
//! instances, their clocks, the policies, the lease), and waits in one `select!` for the next
//! [`Event`]. Every event, whatever it is, runs one pass in the same order:
//!
//! lease (take over, step down, follow) → adopt unknown Swarm services → reload policies → reap
//! exits → container ids → placements → health → drains and stops → scheduled actions → policies
//! (every `metrics_interval`) → refresh step → capacity (launch, retire, bill) → save.
//!
//! Exits, health and drains are read from the drivers and the edge on each pass (they are polled,
//! not pushed), so a [`Event::Tick`] every [`RECONCILE_EVERY`] is what notices them; the other
//! events only make the pass come sooner. Each pass runs in a `reconcile` span naming the group
//! and the event, so every log line says what woke the loop.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;

use super::capacity::Backoff;
use super::coordinate::{Lead, Lease};
use super::saved;
use super::scaling::Policies;
use super::view::{GroupHandle, Request};
use crate::engine::Engine;
use crate::runner::Runner;
use crate::schedule::Scheduler;
use crate::{Coordinator, Registrar};

/// How often the loop looks at its instances (policies run on `metrics_interval`).
pub(super) const RECONCILE_EVERY: Duration = Duration::from_millis(250);

/// What wakes the loop. Closed: nothing else makes it act.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Event {
    /// The loop has just started: the first pass runs at once.
    Started,
    /// [`RECONCILE_EVERY`] passed since the last pass: look at every instance.
    Tick,
    /// The admin API or a reload changed the group (several at once are handled in one pass).
    Requested(Vec<Request>),
    /// This node's lease on the group's loop changed (a swarm group in a cluster):
    /// `Some(fencing token)` while it leads.
    Leadership(Option<u64>),
}

/// One group's reconcile loop and everything it keeps that views do not need.
pub(crate) struct Reconciler {
    pub(super) handle: Arc<GroupHandle>,
    pub(super) registrar: Arc<dyn Registrar>,
    pub(super) name: String,
    /// What each instance's driver runs.
    pub(super) runners: HashMap<String, Runner>,
    /// Each instance's request counter at its last sample, for requests per minute.
    pub(super) served: HashMap<String, (u64, Instant)>,
    /// When a terminating instance gets SIGKILL.
    pub(super) term_deadline: HashMap<String, Instant>,
    pub(super) backoff: Backoff,
    pub(super) policies: Policies,
    /// Saves budget and schedule state (with `[watch] data_dir`).
    pub(super) saver: Option<saved::Saver>,
    /// A swarm group in a cluster: its lease.
    pub(super) lead: Option<Lead>,
    inbox: Option<mpsc::Receiver<Request>>,
}

impl Reconciler {
    /// Sets the loop up: checks the Docker engine a container group needs (and removes what a
    /// crashed run left behind), and restores saved budget and schedule state.
    pub(crate) async fn start(
        handle: Arc<GroupHandle>,
        registrar: Arc<dyn Registrar>,
        policies_version: Arc<AtomicU64>,
        coordinator: Option<Arc<dyn Coordinator>>,
    ) -> Self {
        let scheduler = {
            let s = handle.lock();
            Scheduler::new(&s.cfg.schedules, SystemTime::now())
        };
        let (name, docker, swarm) = {
            let s = handle.lock();
            match &s.cfg.launch.driver {
                flotilla_config::LaunchDriver::Docker { swarm, .. } => (s.cfg.name.clone(), true, swarm.is_some()),
                _ => (s.cfg.name.clone(), false, false),
            }
        };
        // A swarm group in a cluster: its services belong to whichever node leads; they are
        // adopted, never removed as stale.
        let lead = coordinator.filter(|_| swarm).map(|c| Lead::new(c, &name));
        if docker {
            check_engine(&handle, &name, swarm, lead.is_some()).await;
        }
        let policies = Policies::new(&handle.lock(), policies_version, scheduler);
        let inbox = handle.take_inbox();
        let mut r = Reconciler {
            registrar,
            name,
            runners: HashMap::new(),
            served: HashMap::new(),
            term_deadline: HashMap::new(),
            backoff: Backoff::new(),
            policies,
            saver: None,
            lead,
            inbox,
            handle,
        };
        let state_file = r.handle.lock().state_file.clone();
        if let Some(path) = state_file {
            let (saver, minute) = saved::restore(&r.handle, path);
            if let Some(minute) = minute {
                let s = r.handle.lock();
                r.policies.scheduler = Scheduler::resume(&s.cfg.schedules, minute, SystemTime::now());
            }
            r.saver = Some(saver);
        }
        r
    }

    /// Runs until the group is stopping and every instance has exited (or, for a swarm group in
    /// a cluster, until it has let go of them).
    pub(crate) async fn run(mut self) {
        let mut event = Event::Started;
        loop {
            let span = tracing::debug_span!("reconcile", group = %self.name, event = ?event);
            if event != Event::Tick {
                span.in_scope(|| tracing::debug!("the loop was woken"));
            }
            if self.pass().instrument(span).await {
                return;
            }
            event = self.next_event().await;
        }
    }

    /// One pass, in the order the module doc gives. True when the loop is done.
    async fn pass(&mut self) -> bool {
        match self.follow_the_lease().await {
            Lease::Lead => {}
            Lease::Followed => return false,
            Lease::Stop => {
                self.save_state(true).await;
                return true;
            }
        }
        self.check_swarm().await;
        self.reload_policies();
        self.reap();
        self.note_container_ids();
        self.note_addresses();
        self.watch_health();
        self.advance_stops();
        self.run_schedules();
        self.evaluate_policies();
        self.step_refresh();
        if self.resize() {
            self.save_state(true).await;
            return true;
        }
        self.save_state(false).await;
        self.save_for_next_leader().await;
        false
    }

    pub(super) async fn next_event(&mut self) -> Event {
        let mut event = tokio::select! {
            _ = tokio::time::sleep(RECONCILE_EVERY) => Event::Tick,
            Some(r) = recv(&mut self.inbox) => Event::Requested(vec![r]),
            token = lead_changed(&mut self.lead) => Event::Leadership(token),
        };
        if let (Event::Requested(all), Some(inbox)) = (&mut event, self.inbox.as_mut()) {
            // What else arrived meanwhile joins this pass (at most a channel's worth).
            while all.len() < super::view::MAX_REQUESTS {
                let Ok(r) = inbox.try_recv() else { break };
                all.push(r);
            }
        }
        event
    }
}

/// The next request, or never without an inbox; None once every sender is gone.
async fn recv(inbox: &mut Option<mpsc::Receiver<Request>>) -> Option<Request> {
    match inbox {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The lease's next change, or never for a group that has none.
async fn lead_changed(lead: &mut Option<Lead>) -> Option<u64> {
    match lead {
        Some(l) => l.changed().await,
        None => std::future::pending().await,
    }
}

/// Says in the group's activity when the engine a container group needs is not usable, and
/// removes what a crashed run of this deployment left (not for a cluster's swarm group: the next
/// leader adopts those).
async fn check_engine(handle: &GroupHandle, name: &str, swarm: bool, led: bool) {
    let engine = Engine::default();
    if !engine.available().await {
        handle.lock().record(
            "The Docker daemon is not reachable".into(),
            "driver = \"docker\" needs dockerd on /var/run/docker.sock (or DOCKER_HOST=unix://…); launches fail and back off until it answers".into(),
            "failed",
        );
        return;
    }
    if !led {
        crate::docker::remove_stale(&engine, &handle.scope, name).await;
    }
    if swarm {
        if !led {
            crate::swarm::remove_stale(&engine, &handle.scope, name).await;
        }
        if !crate::swarm::is_manager(&engine).await {
            handle.lock().record(
                "This Docker engine is not a Swarm manager".into(),
                "driver = \"swarm\" needs `docker swarm init` (or a manager's socket); launches fail and back off until it is one".into(),
                "failed",
            );
        }
    }
}

//! Where a live group's scaling decision is made: scheduled actions move the bounds (and
//! desired), and every `metrics_interval` the instances are sampled (CPU and memory from the
//! driver, requests and in-flight from the edge, anything else from the watch) and the
//! [`Scaler`] — the same one `flotilla simulate` runs — decides; a scale-out the budget refuses
//! is recorded once, not made.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::coordinate::unix_ms;
use super::view::{since, GroupState, InstanceState};
use super::Reconciler;
use crate::policy::{Observation, Scaler, CPU, LATENCY_P95, REQUESTS_PER_TARGET};
use crate::runner::Runner;
use crate::schedule::{self, Scheduler};

/// A budget-blocked scale-out is recorded again only after this.
const BLOCKED_NOTE_EVERY: Duration = Duration::from_secs(300);

/// The loop's policies and schedules with their clocks.
pub(super) struct Policies {
    pub scaler: Scaler,
    pub scheduler: Scheduler,
    /// Bumped by a reload that changed policies, cooldown or schedules.
    source: Arc<AtomicU64>,
    version: u64,
    /// The policies' clock zero (`Observation::now` counts from here).
    pub started: Instant,
    next_metrics: Instant,
    /// Unix milliseconds of the last step-policy action, saved for the next leader's cooldown.
    pub last_step_unix_ms: Option<u64>,
    /// Unix milliseconds at `started`: the policies' clock zero, for handing their state over.
    pub epoch_ms: u64,
}

impl Policies {
    pub fn new(s: &GroupState, source: Arc<AtomicU64>, scheduler: Scheduler) -> Self {
        let now = Instant::now();
        Self {
            scaler: Scaler::new(&s.cfg.policies, s.cfg.cooldown),
            scheduler,
            source,
            version: 0,
            started: now,
            next_metrics: now + s.cfg.metrics_interval,
            last_step_unix_ms: None,
            epoch_ms: unix_ms(SystemTime::now()),
        }
    }
}

impl Reconciler {
    /// Rebuilds the scaler and scheduler after a reload changed them.
    pub(super) fn reload_policies(&mut self) {
        let current = self.policies.source.load(Ordering::Acquire);
        if current != self.policies.version {
            let s = self.handle.lock();
            self.policies.scaler = Scaler::new(&s.cfg.policies, s.cfg.cooldown);
            self.policies.scheduler = Scheduler::new(&s.cfg.schedules, SystemTime::now());
            self.policies.version = current;
        }
    }

    /// Applies scheduled actions that came due (their new bounds last until the next one).
    pub(super) fn run_schedules(&mut self) {
        let due: Vec<_> = self.policies.scheduler.due(SystemTime::now()).into_iter().cloned().collect();
        if due.is_empty() {
            return;
        }
        let mut s = self.handle.lock();
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
            if let Some(sv) = self.saver.as_mut() {
                sv.scheduled = Some((min, max, desired));
                sv.actions += 1;
            }
        }
    }

    /// Samples instance metrics and lets the policies move `desired`, when `metrics_interval`
    /// has passed since the last time.
    pub(super) fn evaluate_policies(&mut self) {
        if Instant::now() < self.policies.next_metrics {
            return;
        }
        let mut s = self.handle.lock();
        self.policies.next_metrics = Instant::now() + s.cfg.metrics_interval;
        let warmup = s.cfg.instance_warmup;
        let tg = s.cfg.target_group.clone();
        let (mut cpu_sum, mut cpu_n, mut rpm_sum, mut rpm_n, mut flight_sum, mut mem_sum, mut ready) =
            (0.0, 0u32, 0.0, 0u32, 0.0, 0.0, 0u32);
        for i in s.instances.iter_mut() {
            let id = i.view.id.clone();
            if let Some((cpu, mem)) = self.runners.get_mut(&id).and_then(Runner::usage) {
                i.view.cpu = cpu.map(|c| (c * 10.0).round() / 10.0);
                i.view.memory_bytes = mem;
            }
            let status = self.registrar.status(&tg, i.view.addr);
            let now = Instant::now();
            let mut rpm = None;
            if let Some(st) = status {
                i.view.in_flight = st.in_flight;
                if let Some((prev, t)) = self.served.insert(id.clone(), (st.requests, now)) {
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
            now: self.policies.started.elapsed(),
            capacity: s.desired,
            min: s.cfg.min,
            max: s.cfg.max,
            ready,
            metric: &metric,
        };
        let before = self.policies.scaler.last_step_action();
        let decision = self.policies.scaler.evaluate(&obs);
        if self.policies.scaler.last_step_action() != before {
            self.policies.last_step_unix_ms = Some(unix_ms(SystemTime::now()));
        }
        let Some(decision) = decision else { return };
        let mut desired = decision.desired;
        if desired > s.desired {
            if let Some(reason) = s.scale_out_blocked() {
                if s.blocked_noted.is_none_or(|t| since(t) > BLOCKED_NOTE_EVERY) {
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
}

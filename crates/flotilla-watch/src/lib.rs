//! Flotilla's watch: CloudWatch in the box. A sampler scrapes every metric flotilla exports
//! (the same text `/metrics` serves) into an in-process time-series store; alarms evaluate it
//! with CloudWatch semantics and notify webhooks on every state change.
//!
//! The watch imports neither the edge nor the fleet: it reads a [`Source`] of exposition text.

pub mod alarm;
pub mod budget;
mod chunk;
pub mod expo;
mod notify;
pub mod persist;
mod segment;
mod series;
pub mod slo;
pub mod state_file;
pub mod store;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flotilla_config::Config;
use serde::Serialize;

pub use alarm::{AlarmState, Transition};
pub use budget::BudgetView;
pub use notify::NotifierView;
pub use slo::SloView;
pub use store::Point;

use alarm::Alarm;
use notify::{Event, Hub};
use slo::Slo;
use store::Store;

/// How often the history is written to `data_dir`.
const PERSIST_EVERY: Duration = Duration::from_secs(60);

/// Where the metrics come from: Prometheus text, e.g. the edge's `encode_metrics`.
pub type Source = Arc<dyn Fn() -> String + Send + Sync>;

#[derive(Debug, Clone, Serialize)]
pub struct AlarmView {
    pub name: String,
    pub metric: String,
    pub labels: BTreeMap<String, String>,
    pub state: AlarmState,
    pub datapoints: Vec<Option<f64>>,
    pub threshold: f64,
    pub period_secs: f64,
    pub history: Vec<Transition>,
}

/// Whether this node sends the cluster's notifications (it holds the cluster's watch lease).
pub type ClusterGate = Arc<dyn Fn() -> bool + Send + Sync>;

pub struct Watch {
    store: Mutex<Store>,
    /// Set in a cluster: cluster-scoped alarms and SLOs notify only where this says true.
    cluster_gate: Mutex<Option<ClusterGate>>,
    alarms: Mutex<Vec<Alarm>>,
    slos: Mutex<Vec<Slo>>,
    budget: Mutex<Option<budget::Budget>>,
    /// Where the account budget's month is saved (with `data_dir`), and what was written last.
    budget_file: Option<std::path::PathBuf>,
    budget_saved: Mutex<Option<budget::Saved>>,
    notifiers: Hub,
    resolution: Duration,
    /// Appends the history to `data_dir` (one flush at a time).
    writer: Option<Mutex<persist::Writer>>,
}

fn now_secs() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

fn rfc3339(secs: f64) -> String {
    flotilla_config::time::rfc3339(UNIX_EPOCH + Duration::from_secs_f64(secs.max(0.0)))
}

impl Watch {
    /// Builds the store, alarms and notifiers, and starts the sampler on the current runtime.
    pub fn start(cfg: &Config, source: Source) -> Arc<Self> {
        let w = &cfg.watch;
        let notifiers = Hub::start(cfg.notifiers.values());
        let mut store = Store::new(w.retention.as_secs_f64(), w.resolution.as_secs_f64());
        store.advance(store::ms(now_secs()));
        let mut writer = None;
        if let Some(dir) = &w.data_dir {
            let (wr, loaded) = persist::load(dir, &mut store);
            if loaded.segments > 0 || loaded.legacy_points > 0 {
                let st = store.stats();
                tracing::info!(
                    dir = %dir.display(),
                    points = loaded.points + loaded.legacy_points as u64,
                    series = st.series,
                    segments = loaded.segments,
                    millis = loaded.took.as_millis() as u64,
                    "watch history restored"
                );
            }
            writer = Some(wr);
        }
        let store = Mutex::new(store);
        let mut account = cfg.budget.clone().map(budget::Budget::new);
        let budget_file = w.data_dir.as_ref().map(|d| d.join("watch-budget.state"));
        let mut budget_saved = None;
        if let (Some(b), Some(path)) = (account.as_mut(), &budget_file) {
            if let Some(saved) = state_file::read::<budget::Saved>(path, "account budget") {
                if b.import(saved.clone()) {
                    tracing::info!(spent = b.view().spent, capped = b.capped(), "the month's account budget restored");
                    budget_saved = Some(saved);
                }
            }
        }
        if let (Some(dir), Some(wr)) = (&w.data_dir, writer.as_mut()) {
            persist::finish_migration(dir, wr, &store);
        }
        let watch = Arc::new(Self {
            writer: writer.map(Mutex::new),
            store,
            cluster_gate: Mutex::new(None),
            alarms: Mutex::new(cfg.alarms.iter().cloned().map(Alarm::new).collect()),
            slos: Mutex::new(cfg.slos.iter().cloned().map(Slo::new).collect()),
            budget: Mutex::new(account),
            budget_file,
            budget_saved: Mutex::new(budget_saved),
            notifiers,
            resolution: w.resolution,
        });
        tokio::spawn(sample_loop(Arc::downgrade(&watch), source));
        watch
    }

    /// In a cluster every node evaluates cluster-scoped alarms and SLOs (each shows their state),
    /// but only the node `gate` names sends their notifications: one per change, not one per node.
    pub fn set_cluster_gate(&self, gate: ClusterGate) {
        *self.cluster_gate.lock().unwrap_or_else(|e| e.into_inner()) = Some(gate);
    }

    /// False when a cluster-scoped notification is another node's to send.
    fn sends(&self, cluster_scoped: bool, what: &str) -> bool {
        if !cluster_scoped {
            return true;
        }
        let gate = self.cluster_gate.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let leads = gate.is_none_or(|g| g());
        if !leads {
            tracing::debug!(what, "not leading the cluster's watch: the leading node notifies");
        }
        leads
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn alarms_lock(&self) -> MutexGuard<'_, Vec<Alarm>> {
        self.alarms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A series between two times (epoch seconds), averaged into `step`-second buckets when a
    /// step is given.
    pub fn query(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
        from: f64,
        to: f64,
        step: Option<f64>,
    ) -> Vec<Point> {
        let points = self.store().query(name, labels, from, to);
        let Some(step) = step.filter(|s| *s > 0.0) else { return points };
        let mut buckets: BTreeMap<i64, (f64, u32)> = BTreeMap::new();
        for p in points {
            let e = buckets.entry((p.t / step).floor() as i64).or_insert((0.0, 0));
            e.0 += p.v;
            e.1 += 1;
        }
        buckets.into_iter().map(|(k, (sum, n))| Point { t: k as f64 * step, v: sum / n as f64 }).collect()
    }

    /// The average of a series over the last `window_secs` (None without datapoints).
    pub fn recent(&self, name: &str, labels: &BTreeMap<String, String>, window_secs: f64) -> Option<f64> {
        let now = now_secs();
        let points = self.store().query(name, labels, now - window_secs, now);
        (!points.is_empty()).then(|| points.iter().map(|p| p.v).sum::<f64>() / points.len() as f64)
    }

    pub fn metric_names(&self) -> Vec<(String, Vec<store::Labels>)> {
        self.store().names()
    }

    pub fn alarms(&self) -> Vec<AlarmView> {
        self.alarms_lock()
            .iter()
            .map(|a| AlarmView {
                name: a.cfg.name.clone(),
                metric: a.cfg.metric.clone(),
                labels: a.cfg.labels.clone(),
                state: a.state,
                datapoints: a.datapoints.iter().copied().collect(),
                threshold: a.cfg.threshold,
                period_secs: a.cfg.period.as_secs_f64(),
                history: a.history.iter().rev().cloned().collect(),
            })
            .collect()
    }

    /// Appends what the history gained to `data_dir` (if set) and saves the account budget's
    /// month; called every minute and at shutdown.
    pub fn persist(&self) {
        self.save_budget();
        let Some(w) = &self.writer else { return };
        let mut w = w.lock().unwrap_or_else(|e| e.into_inner());
        w.flush(&self.store);
        let st = self.store().stats();
        tracing::debug!(
            series = st.series,
            points = st.points,
            chunk_bytes = st.chunk_bytes,
            bits = st.bits,
            "watch history flushed"
        );
    }

    /// Writes the account budget's month if it changed (at once after an alert, so a crash
    /// cannot send it twice; otherwise with every `persist`).
    fn save_budget(&self) {
        let Some(path) = &self.budget_file else { return };
        let Some(now) = self.budget.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|b| b.export()) else {
            return;
        };
        let mut last = self.budget_saved.lock().unwrap_or_else(|e| e.into_inner());
        if last.as_ref() == Some(&now) {
            return;
        }
        match state_file::write(path, &now) {
            Ok(()) => *last = Some(now),
            Err(e) => tracing::warn!(file = %path.display(), error = %e, "cannot save the account budget"),
        }
    }

    /// How much the store holds now.
    pub fn store_stats(&self) -> store::Stats {
        self.store().stats()
    }

    pub fn budget(&self) -> Option<BudgetView> {
        self.budget.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|b| b.view())
    }

    /// Some(reason) when `[budget] hard_cap` holds: the fleet refuses scale-out.
    pub fn budget_cap(&self) -> Option<String> {
        let b = self.budget.lock().unwrap_or_else(|e| e.into_inner());
        let b = b.as_ref().filter(|b| b.capped())?;
        let v = b.view();
        Some(format!("the account budget is spent ({:.2} of {:.2} {})", v.spent, v.monthly, v.currency))
    }

    /// Each notifier with what became of its notifications (no secret: the webhook's scheme
    /// and host only).
    pub fn notifiers(&self) -> Vec<NotifierView> {
        self.notifiers.views()
    }

    /// `flotilla_notifications_total` for `/metrics`.
    pub fn encode_notifier_metrics(&self) -> String {
        self.notifiers.encode_metrics()
    }

    pub fn slos(&self) -> Vec<SloView> {
        self.slos.lock().unwrap_or_else(|e| e.into_inner()).iter().filter_map(|s| s.last.clone()).collect()
    }

    /// One scrape taken at `t` (epoch seconds), then every alarm whose period ended since its
    /// last evaluation.
    fn tick(&self, t: f64, source: &Source) {
        let (samples, kinds) = expo::parse(&source());
        self.store().ingest(t, &samples, &kinds);
        let fired = match self.budget.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            Some(b) => b.accrue(t, &samples).into_iter().map(|a| (a, b.notify().to_vec())).collect(),
            None => Vec::new(),
        };
        if !fired.is_empty() {
            // Saved before anyone is told, so a crash right after cannot send it twice (rare:
            // a few alerts a month, worth one small synchronous write).
            self.save_budget();
        }
        for (a, notify) in fired {
            let pct = a.threshold * 100.0;
            tracing::warn!(
                kind = a.kind,
                percent = pct,
                spent = a.view.spent,
                forecast = a.view.forecast,
                "budget alert"
            );
            self.notifiers.send(&notify, Event::budget(&a, rfc3339(t)));
        }
        let mut alarms = self.alarms_lock();
        for a in alarms.iter_mut() {
            let period = a.cfg.period.as_secs_f64();
            // Periods aligned to the clock; evaluate each that ended (at most N after a stall).
            let ended = (t / period).floor() * period;
            let mut start =
                a.evaluated_until.unwrap_or(ended - period).max(ended - period * a.cfg.evaluation_periods as f64);
            while start + period <= ended + 1e-9 {
                let points = self.store().query(&alarm::series_of(&a.cfg), &a.cfg.labels, start, start + period - 1e-6);
                let dp = a.datapoint(&points);
                if let Some(tr) = a.observe(dp, rfc3339(start + period)) {
                    self.announce(a, &tr);
                }
                start += period;
            }
            a.evaluated_until = Some(ended);
        }
        drop(alarms);
        let mut slos = self.slos.lock().unwrap_or_else(|e| e.into_inner());
        for s in slos.iter_mut() {
            let changes = s.evaluate(&self.store(), t);
            for c in changes {
                let view = s.last.as_ref();
                let ev = Event::slo(
                    &s.cfg.name,
                    &s.cfg.target_group,
                    c.alert,
                    c.firing,
                    rfc3339(t),
                    view.map(|v| &v.burn_rates),
                    view.and_then(|v| v.error_budget_remaining),
                );
                if c.firing {
                    tracing::warn!(slo = %s.cfg.name, alert = c.alert, "SLO burn alert firing");
                } else {
                    tracing::info!(slo = %s.cfg.name, alert = c.alert, "SLO burn alert resolved");
                }
                if !self.sends(s.cfg.cluster, &s.cfg.name) {
                    continue;
                }
                self.notifiers.send(&s.cfg.notify, ev);
            }
        }
    }

    fn announce(&self, a: &Alarm, tr: &Transition) {
        match tr.to {
            AlarmState::Alarm => {
                tracing::warn!(alarm = %a.cfg.name, from = ?tr.from, reason = %tr.reason, "alarm state ALARM")
            }
            _ => {
                tracing::info!(alarm = %a.cfg.name, from = ?tr.from, to = ?tr.to, reason = %tr.reason, "alarm state changed")
            }
        }
        if !self.sends(a.cfg.cluster, &a.cfg.name) {
            return;
        }
        self.notifiers.send(&a.cfg.notify, Event::alarm(&a.cfg, tr));
    }
}

async fn sample_loop(watch: std::sync::Weak<Watch>, source: Source) {
    let every = match watch.upgrade() {
        Some(w) => w.resolution,
        None => return,
    };
    let mut interval = tokio::time::interval(every);
    // Skip, not Delay: a late tick keeps the schedule (Delay would shift it by the lateness).
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut next_save = tokio::time::Instant::now() + PERSIST_EVERY;
    let mut clock = SampleClock::default();
    loop {
        let due = interval.tick().await;
        let Some(w) = watch.upgrade() else { return };
        w.tick(clock.at(due, now_secs()), &source);
        if tokio::time::Instant::now() >= next_save {
            next_save = tokio::time::Instant::now() + PERSIST_EVERY;
            // Writing waits for the disk: off the runtime thread.
            let w2 = w.clone();
            let _ = tokio::task::spawn_blocking(move || w2.persist()).await;
        }
    }
}

/// Sample times on the interval's own schedule (whole milliseconds, exactly `resolution`
/// apart), tied to the wall clock and re-tied when the two drift apart by more than this. A
/// steady spacing costs the store one bit per timestamp instead of the ~9 that a few
/// milliseconds of wake-up jitter would.
const CLOCK_SLACK_MS: i64 = 250;

#[derive(Default)]
struct SampleClock {
    anchor: Option<(tokio::time::Instant, i64)>,
}

impl SampleClock {
    /// The time (epoch seconds) to record a sample due at `due` and taken at `wall`.
    fn at(&mut self, due: tokio::time::Instant, wall: f64) -> f64 {
        let wall_ms = store::ms(wall);
        if let Some((at, ms)) = self.anchor {
            let t = ms + due.saturating_duration_since(at).as_millis() as i64;
            if (t - wall_ms).abs() <= CLOCK_SLACK_MS && due >= at {
                return t as f64 / 1000.0;
            }
        }
        self.anchor = Some((due, wall_ms));
        wall_ms as f64 / 1000.0
    }
}

//! Notifiers: every alarm state change, SLO burn alert and budget alert is logged and POSTed to
//! the notifiers it names, in each one's format (Flotilla's JSON, Slack, PagerDuty Events v2,
//! Alertmanager's webhook), over HTTPS checked against the system's roots or the notifier's
//! `ca`. Each notifier has a bounded queue and one sender task, so a slow or dead receiver
//! delays only its own notifications and never grows memory; what is dropped because the queue
//! is full, and what is given up after the last attempt, is logged and counted
//! (`flotilla_notifications_total`), never lost silently.
//!
//! The webhook URL and PagerDuty's routing key are secrets: logs and API answers name the
//! notifier and show the URL's scheme and host only.

mod client;
pub mod event;
pub mod format;
mod send;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use flotilla_config::NotifierConfig;
use serde::Serialize;
use tokio::sync::mpsc;

pub use event::{Event, Status};

/// Notifications waiting per notifier; more are dropped (logged and counted).
const QUEUE: usize = 1000;

/// What happened to one notifier's notifications since start.
#[derive(Debug, Default)]
pub struct Counts {
    pub delivered: AtomicU64,
    /// Attempts that failed and were tried again.
    pub retried: AtomicU64,
    /// Notifications abandoned: every attempt failed, or the receiver refused one for good (4xx).
    pub given_up: AtomicU64,
    /// Notifications not even queued: the queue was full.
    pub dropped: AtomicU64,
}

/// A notifier as the admin API shows it: no secret.
#[derive(Debug, Clone, Serialize)]
pub struct NotifierView {
    pub name: String,
    pub format: &'static str,
    /// Scheme and host only: a Slack URL's path is its token.
    pub webhook: String,
    pub ca: Option<String>,
    pub queued: usize,
    pub delivered: u64,
    pub retried: u64,
    pub given_up: u64,
    pub dropped: u64,
}

struct Notifier {
    cfg: Arc<NotifierConfig>,
    tx: mpsc::Sender<Bytes>,
    counts: Arc<Counts>,
}

impl Notifier {
    fn start(cfg: NotifierConfig) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let cfg = Arc::new(cfg);
        let counts = Arc::new(Counts::default());
        let client = client::build(&cfg);
        if let Err(e) = &client {
            tracing::error!(notifier = %cfg.name, error = %e, "notifier cannot send: every notification will be given up");
        }
        tokio::spawn(send::run(cfg.clone(), client.ok(), rx, counts.clone()));
        Self { cfg, tx, counts }
    }

    fn send(&self, body: Bytes) {
        if self.tx.try_send(body).is_err() {
            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(notifier = %self.cfg.name, queue = QUEUE, "notification queue full; dropping a notification");
        }
    }
}

/// Every notifier, and when each firing thing started (so a resolve can say since when).
pub struct Hub {
    notifiers: BTreeMap<String, Notifier>,
    /// `Event::key` → when it fired; one entry per alarm or SLO alert firing now, so bounded by
    /// the config.
    firing_since: Mutex<HashMap<String, String>>,
    /// This machine's name, PagerDuty's `source`.
    source: String,
}

impl Hub {
    /// Starts each notifier's sender task on the current runtime.
    pub fn start<'a>(cfgs: impl IntoIterator<Item = &'a NotifierConfig>) -> Self {
        Self {
            notifiers: cfgs.into_iter().map(|n| (n.name.clone(), Notifier::start(n.clone()))).collect(),
            firing_since: Mutex::new(HashMap::new()),
            source: hostname(),
        }
    }

    /// Renders `ev` for each of the `names` notifiers and queues it.
    pub fn send(&self, names: &[String], mut ev: Event) {
        self.stamp(&mut ev);
        for name in names {
            let Some(n) = self.notifiers.get(name) else { continue };
            let Some(body) = format::render(&n.cfg, &self.source, &ev) else { continue };
            n.send(Bytes::from(body.to_string()));
        }
    }

    /// Remembers when `ev` fired, or tells a resolve since when it was firing.
    fn stamp(&self, ev: &mut Event) {
        let mut since = self.firing_since.lock().unwrap_or_else(|e| e.into_inner());
        match ev.status {
            Status::Firing => {
                since.entry(ev.key.clone()).or_insert_with(|| ev.at.clone());
            }
            Status::Resolved => ev.started = since.remove(&ev.key),
            Status::Notice | Status::Changed => {}
        }
    }

    pub fn views(&self) -> Vec<NotifierView> {
        self.notifiers
            .values()
            .map(|n| {
                let c = &n.counts;
                NotifierView {
                    name: n.cfg.name.clone(),
                    format: n.cfg.format.as_str(),
                    webhook: n.cfg.shown_webhook(),
                    ca: n.cfg.ca.as_ref().map(|c| c.path.display().to_string()),
                    queued: QUEUE - n.tx.capacity(),
                    delivered: c.delivered.load(Ordering::Relaxed),
                    retried: c.retried.load(Ordering::Relaxed),
                    given_up: c.given_up.load(Ordering::Relaxed),
                    dropped: c.dropped.load(Ordering::Relaxed),
                }
            })
            .collect()
    }

    /// `flotilla_notifications_total{notifier,result}` as exposition text (notifier names are
    /// letters, digits, '-' and '_', so need no escaping).
    pub fn encode_metrics(&self) -> String {
        let views = self.views();
        if views.is_empty() {
            return String::new();
        }
        let mut out = String::from(
            "# HELP flotilla_notifications Notifications by notifier and outcome (delivered, retried attempts, given up, dropped with the queue full).\n\
             # TYPE flotilla_notifications counter\n",
        );
        for v in views {
            for (result, n) in
                [("delivered", v.delivered), ("retried", v.retried), ("given_up", v.given_up), ("dropped", v.dropped)]
            {
                out.push_str(&format!(
                    "flotilla_notifications_total{{notifier=\"{}\",result=\"{result}\"}} {n}\n",
                    v.name
                ));
            }
        }
        out
    }
}

/// The kernel's host name (PagerDuty's `source`), or "flotilla".
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().chars().filter(|c| !c.is_control()).take(255).collect::<String>())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "flotilla".into())
}

//! Notifiers: every alarm state change is logged and POSTed as JSON to the alarm's webhooks,
//! retried with backoff. Each notifier has a bounded queue and one sender task, so a slow or
//! dead receiver delays only its own notifications and never grows memory without bound.

use std::time::Duration;

use bytes::Bytes;
use flotilla_config::NotifierConfig;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;

/// Notifications waiting per notifier; more are dropped (and logged).
const QUEUE: usize = 1000;

#[derive(Clone)]
pub struct Notifier {
    name: String,
    tx: mpsc::Sender<serde_json::Value>,
}

impl Notifier {
    /// Starts the notifier's sender task on the current runtime.
    pub fn start(cfg: NotifierConfig) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let name = cfg.name.clone();
        tokio::spawn(run(cfg, rx));
        Self { name, tx }
    }

    pub fn send(&self, payload: serde_json::Value) {
        if self.tx.try_send(payload).is_err() {
            tracing::warn!(notifier = %self.name, "notification queue full; dropping a notification");
        }
    }
}

async fn run(cfg: NotifierConfig, mut rx: mpsc::Receiver<serde_json::Value>) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    while let Some(payload) = rx.recv().await {
        let body = Bytes::from(payload.to_string());
        let mut delay = Duration::from_secs(1);
        for attempt in 1..=cfg.attempts {
            match deliver(&client, &cfg, body.clone()).await {
                Ok(()) => {
                    tracing::info!(notifier = %cfg.name, attempt, "notification delivered");
                    break;
                }
                Err(e) if attempt == cfg.attempts => {
                    tracing::error!(notifier = %cfg.name, error = %e, attempts = attempt, "notification not delivered; giving up");
                }
                Err(e) => {
                    tracing::warn!(notifier = %cfg.name, error = %e, attempt, retry_in = ?delay, "notification failed");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(60));
                }
            }
        }
    }
}

async fn deliver(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    cfg: &NotifierConfig,
    body: Bytes,
) -> Result<(), String> {
    let req = http::Request::post(&cfg.webhook)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::USER_AGENT, "flotilla-watch")
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(cfg.timeout, client.request(req))
        .await
        .map_err(|_| format!("no answer within {:?}", cfg.timeout))?
        .map_err(|e| e.to_string())?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("the receiver answered {}", resp.status()))
    }
}

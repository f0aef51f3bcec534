//! One notifier's sender task: takes rendered notifications from its queue one at a time and
//! POSTs each, retrying what may succeed later (no connection, a timeout, 408, 429, 5xx) with
//! backoff — 1 s, 2 s, 4 s … at most 60 s, or the receiver's `Retry-After` up to that — and
//! giving up at once on what will not (another 4xx: a revoked Slack URL, a bad PagerDuty key).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flotilla_config::NotifierConfig;
use http_body_util::Full;
use tokio::sync::mpsc;

use super::client::HttpClient;
use super::Counts;

/// The longest wait between two attempts, whatever the receiver asks.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// How one attempt went.
#[derive(Debug, PartialEq)]
pub(crate) enum Outcome {
    Delivered,
    /// Worth another attempt, after the receiver's `Retry-After` if it gave one.
    Failed(String, Option<Duration>),
    /// The receiver refused it for good: another attempt would be refused too.
    Refused(String),
}

pub(super) async fn run(
    cfg: Arc<NotifierConfig>,
    client: Option<HttpClient>,
    mut rx: mpsc::Receiver<Bytes>,
    counts: Arc<Counts>,
) {
    let uri = match cfg.webhook.parse::<http::Uri>() {
        Ok(u) => Some(u),
        Err(_) => {
            tracing::error!(notifier = %cfg.name, webhook = %cfg.shown_webhook(), "webhook is not a usable URL: every notification will be given up");
            None
        }
    };
    while let Some(body) = rx.recv().await {
        let (Some(client), Some(uri)) = (&client, &uri) else {
            counts.given_up.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let mut delay = Duration::from_secs(1);
        for attempt in 1..=cfg.attempts {
            match attempt_once(client, uri, &cfg, body.clone()).await {
                Outcome::Delivered => {
                    counts.delivered.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(notifier = %cfg.name, attempt, "notification delivered");
                    break;
                }
                Outcome::Refused(why) => {
                    counts.given_up.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(notifier = %cfg.name, error = %why, attempt, "notification refused by the receiver; not retried");
                    break;
                }
                Outcome::Failed(why, _) if attempt == cfg.attempts => {
                    counts.given_up.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(notifier = %cfg.name, error = %why, attempts = attempt, "notification not delivered; giving up");
                }
                Outcome::Failed(why, retry_after) => {
                    counts.retried.fetch_add(1, Ordering::Relaxed);
                    let wait = retry_after.unwrap_or(delay).min(MAX_BACKOFF);
                    tracing::warn!(notifier = %cfg.name, error = %why, attempt, retry_in = ?wait, "notification failed");
                    tokio::time::sleep(wait).await;
                    delay = (delay * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

async fn attempt_once(client: &HttpClient, uri: &http::Uri, cfg: &NotifierConfig, body: Bytes) -> Outcome {
    let req = http::Request::post(uri.clone())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::USER_AGENT, "flotilla-watch")
        .body(Full::new(body));
    let req = match req {
        Ok(r) => r,
        Err(e) => return Outcome::Refused(format!("cannot build the request: {e}")),
    };
    match tokio::time::timeout(cfg.timeout, client.request(req)).await {
        Err(_) => Outcome::Failed(format!("no answer within {:?}", cfg.timeout), None),
        Ok(Err(e)) => Outcome::Failed(scrub(&chain(&e), cfg), None),
        Ok(Ok(resp)) => classify(resp.status(), resp.headers().get(http::header::RETRY_AFTER)),
    }
}

/// What an answer means for this notification.
pub(crate) fn classify(status: http::StatusCode, retry_after: Option<&http::HeaderValue>) -> Outcome {
    if status.is_success() {
        return Outcome::Delivered;
    }
    let why = format!("the receiver answered {status}");
    let again = status.is_server_error()
        || status == http::StatusCode::REQUEST_TIMEOUT
        || status == http::StatusCode::TOO_MANY_REQUESTS;
    if again {
        // Seconds only (an HTTP date would need a clock we do not trust to agree).
        let after = retry_after.and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok()).map(Duration::from_secs);
        Outcome::Failed(why, after)
    } else {
        Outcome::Refused(why)
    }
}

/// An error with its causes ("client error (Connect): invalid peer certificate: UnknownIssuer").
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// Whatever a library put in an error message, the webhook's path and the routing key leave it.
fn scrub(msg: &str, cfg: &NotifierConfig) -> String {
    let mut out = msg.replace(&cfg.webhook, &cfg.shown_webhook());
    if let Some(rest) = cfg.webhook.split_once("://").map(|(_, r)| r) {
        if let Some(i) = rest.find(['/', '?']) {
            let path = &rest[i..];
            if path.len() > 1 {
                out = out.replace(path, "/…");
            }
        }
    }
    if let Some(k) = cfg.routing_key.as_deref().filter(|k| !k.is_empty()) {
        out = out.replace(k, "<hidden>");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderValue, StatusCode};

    #[test]
    fn what_is_retried_and_what_is_not() {
        assert_eq!(classify(StatusCode::ACCEPTED, None), Outcome::Delivered);
        assert_eq!(classify(StatusCode::NO_CONTENT, None), Outcome::Delivered);
        let hv = HeaderValue::from_static("7");
        for s in [500, 502, 503, 504, 408, 429] {
            let s = StatusCode::from_u16(s).unwrap();
            assert!(matches!(classify(s, None), Outcome::Failed(_, None)), "{s}");
            assert_eq!(
                classify(s, Some(&hv)),
                Outcome::Failed(format!("the receiver answered {s}"), Some(Duration::from_secs(7)))
            );
        }
        for s in [400, 401, 403, 404, 410, 413, 301] {
            let s = StatusCode::from_u16(s).unwrap();
            assert!(matches!(classify(s, None), Outcome::Refused(_)), "{s}");
        }
        // A date or garbage in Retry-After: our own backoff.
        let date = HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT");
        assert!(matches!(classify(StatusCode::TOO_MANY_REQUESTS, Some(&date)), Outcome::Failed(_, None)));
    }

    #[test]
    fn errors_lose_the_secrets() {
        let cfg = NotifierConfig {
            name: "p".into(),
            webhook: "https://hooks.slack.com/services/T0/B0/s3cret?x=1".into(),
            format: flotilla_config::NotifierFormat::PagerDuty,
            ca: None,
            routing_key: Some("KEY123".into()),
            severity: None,
            timeout: Duration::from_secs(1),
            attempts: 1,
        };
        let msg =
            "error for https://hooks.slack.com/services/T0/B0/s3cret?x=1 at /services/T0/B0/s3cret?x=1 with KEY123";
        assert_eq!(scrub(msg, &cfg), "error for https://hooks.slack.com/… at /… with <hidden>");
    }
}

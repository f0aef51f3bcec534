//! Notifications that reach people: a real alarm and a real SLO burn alert, caused by real 5xx
//! through the edge, delivered over HTTPS (a throwaway CA the notifiers are told to trust) in
//! each receiver's format — Flotilla's JSON, a Slack incoming webhook, PagerDuty Events v2 and
//! Alertmanager's webhook — each after a failed first attempt, then resolved. Secrets (the Slack
//! URL's path, the PagerDuty key) reach neither the log nor the admin API. A receiver whose CA
//! is not trusted is never sent to; one that refuses (4xx) is not retried.

mod common;

use std::time::{Duration, Instant};

use common::hooks::{hook_pki, https_receiver, Hook};
use common::*;
use serde_json::Value;
use tokio::sync::mpsc;

const SLACK_PATH: &str = "/services/T0FLOTILLA/B0FLOTILLA/s3cretSlackToken";
const PD_KEY: &str = "pdRoutingKey0123456789abcdef0000";

/// Everything one receiver accepted, in order, so a test can look for each notification in
/// any order (an SLO may fire before the alarm).
struct Seen {
    rx: mpsc::UnboundedReceiver<Hook>,
    all: Vec<Hook>,
}

impl Seen {
    fn new(rx: mpsc::UnboundedReceiver<Hook>) -> Self {
        Self { rx, all: Vec::new() }
    }

    /// The first request `pred` accepts, waiting up to 20 s for it.
    async fn wait(&mut self, what: &str, pred: impl Fn(&Hook) -> bool) -> Hook {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(h) = self.all.iter().find(|h| pred(h)) {
                return h.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some(h)) => self.all.push(h),
                _ => panic!("no {what} within 20 s; got {:#?}", self.all),
            }
        }
    }
}

async fn alarm_state(f: &Flotilla, name: &str) -> String {
    let v: Value = serde_json::from_str(&get(&f.admin("/api/v1/alarms")).await.1).unwrap();
    v["alarms"].as_array().unwrap().iter().find(|a| a["name"] == name).unwrap()["state"].as_str().unwrap().to_string()
}

async fn notifiers(f: &Flotilla) -> (String, Value) {
    let (status, body) = get(&f.admin("/api/v1/notifiers")).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    (body, v)
}

fn counts<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["notifiers"].as_array().unwrap().iter().find(|n| n["name"] == name).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_format_reaches_an_https_receiver_retried_then_resolved() {
    let app = DemoApp::start("a");
    let dir = scratch_dir("notify-formats");
    hook_pki(&dir);
    // Each receiver fails its first request with a 503: every format shows the retry.
    let (generic_port, generic) = https_receiver(&dir, &[503]).await;
    let mut generic = Seen::new(generic);
    let (slack_port, slack) = https_receiver(&dir, &[503]).await;
    let mut slack = Seen::new(slack);
    let (pd_port, pd) = https_receiver(&dir, &[503]).await;
    let mut pd = Seen::new(pd);
    let (am_port, am) = https_receiver(&dir, &[503]).await;
    let mut am = Seen::new(am);
    let all = r#"["generic", "slack", "pagerduty", "alertmanager"]"#;
    let body = format!(
        r#"{ROUTE_ALL}{tg}[target_groups.web.passive]
consecutive_5xx = 0

[watch]
resolution = "250ms"

[notifiers.generic]
webhook = "https://127.0.0.1:{generic_port}/hook"
ca = "ca.pem"

[notifiers.slack]
format = "slack"
webhook = "${{SLACK_WEBHOOK}}"
ca = "ca.pem"

[notifiers.pagerduty]
format = "pagerduty"
webhook = "https://127.0.0.1:{pd_port}/v2/enqueue"
routing_key = "${{PAGERDUTY_ROUTING_KEY}}"
ca = "ca.pem"

[notifiers.alertmanager]
format = "alertmanager"
webhook = "https://localhost:{am_port}/alerts"
ca = "ca.pem"

[[alarms]]
name = "high-5xx"
metric = "http_requests_5xx_rate"
labels = {{ target_group = "web" }}
statistic = "max"
period = "1s"
evaluation_periods = 2
datapoints_to_alarm = 2
threshold = 0
comparison = ">"
missing_data = "not_breaching"
notify = {all}

[[slos]]
name = "web-availability"
target_group = "web"
objective = "99.9%"
kind = "availability"
notify = {all}
"#,
        tg = group_toml("web", &[&app], "")
    );
    let (port, admin_port) = (free_port(), free_port());
    let text = format!(
        "[edge]\nlisten = [\"127.0.0.1:{port}\"]\n\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\ntoken = \"test-token\"\n\n{body}"
    );
    let slack_url = format!("https://127.0.0.1:{slack_port}{SLACK_PATH}");
    let env = [("SLACK_WEBHOOK", slack_url.as_str()), ("PAGERDUTY_ROUTING_KEY", PD_KEY)];
    let f = Flotilla::start_env(&dir, &text, port, admin_port, "info", &env);
    f.wait_target_state("web", &app.addr(), "healthy", Duration::from_secs(10)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while alarm_state(&f, "high-5xx").await != "OK" {
        let _ = get(&f.url("/whoami")).await;
        assert!(Instant::now() < deadline, "high-5xx never reached OK");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Errors for a few seconds: the alarm fires and the availability SLO burns fast.
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        assert_eq!(get(&f.url("/status/500")).await.0, 500);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let is_alarm = |h: &Hook| h.body["alarm"] == "high-5xx";
    let g = generic.wait("generic ALARM", |h| is_alarm(h) && h.body["state"] == "ALARM").await;
    assert_eq!((g.path.as_str(), &g.body["previous_state"]), ("/hook", &Value::from("OK")), "{g:?}");

    let s = slack
        .wait("Slack FIRING", |h| h.body["text"].as_str().is_some_and(|t| t.starts_with("[FIRING] alarm high-5xx")))
        .await;
    assert_eq!(s.path, SLACK_PATH, "the Slack URL from the environment, path and all");
    let head = s.body["blocks"][0]["text"]["text"].as_str().unwrap();
    assert!(head.starts_with(":red_circle: *FIRING* (critical) alarm high-5xx is ALARM"), "{head}");

    let t = pd.wait("PagerDuty trigger", |h| h.body["dedup_key"] == "flotilla/alarm/high-5xx").await;
    assert_eq!(t.path, "/v2/enqueue");
    assert_eq!((t.body["event_action"].as_str(), t.body["routing_key"].as_str()), (Some("trigger"), Some(PD_KEY)));
    assert_eq!(t.body["payload"]["severity"], "critical");
    assert_eq!(t.body["payload"]["component"], "web");
    assert!(t.body["payload"]["summary"].as_str().unwrap().starts_with("alarm high-5xx is ALARM: "), "{t:?}");

    let a = am
        .wait("Alertmanager firing", |h| {
            h.body["alerts"][0]["labels"]["alertname"] == "high-5xx" && h.body["status"] == "firing"
        })
        .await;
    assert_eq!((a.body["version"].as_str(), a.body["receiver"].as_str()), (Some("4"), Some("alertmanager")));
    let fired = a.body["alerts"][0].clone();
    assert_eq!(fired["endsAt"], "0001-01-01T00:00:00Z");
    assert_eq!(fired["labels"]["target_group"], "web");

    // The SLO's fast burn reaches every format too.
    generic.wait("generic SLO", |h| h.body["slo"] == "web-availability" && h.body["state"] == "firing").await;
    slack
        .wait("Slack SLO", |h| {
            h.body["text"].as_str().is_some_and(|t| t.contains("SLO web-availability (web): fast burn firing"))
        })
        .await;
    let slo = pd.wait("PagerDuty SLO", |h| h.body["dedup_key"] == "flotilla/slo/web-availability/fast_burn").await;
    assert_eq!(slo.body["payload"]["class"], "slo");
    am.wait("Alertmanager SLO", |h| h.body["alerts"][0]["labels"]["alert"] == "fast_burn").await;

    // Errors stop: the alarm resolves, in every format.
    generic
        .wait("generic ALARM → OK", |h| is_alarm(h) && h.body["state"] == "OK" && h.body["previous_state"] == "ALARM")
        .await;
    slack
        .wait("Slack RESOLVED", |h| {
            h.body["text"].as_str().is_some_and(|t| t.starts_with("[RESOLVED] alarm high-5xx is OK"))
        })
        .await;
    let r = pd
        .wait("PagerDuty resolve", |h| {
            h.body["dedup_key"] == "flotilla/alarm/high-5xx" && h.body["event_action"] == "resolve"
        })
        .await;
    assert_eq!(r.body["routing_key"], PD_KEY);
    let a = am
        .wait("Alertmanager resolved", |h| {
            h.body["alerts"][0]["labels"]["alertname"] == "high-5xx" && h.body["status"] == "resolved"
        })
        .await;
    let resolved = &a.body["alerts"][0];
    assert_eq!(resolved["fingerprint"], fired["fingerprint"], "one alert, firing then resolved");
    assert_eq!(resolved["startsAt"], fired["startsAt"]);
    assert!(resolved["endsAt"].as_str().unwrap() > fired["startsAt"].as_str().unwrap(), "{resolved}");

    // Every notifier retried its first attempt, and says so, without its secrets.
    let log = f.log();
    for name in ["generic", "slack", "pagerduty", "alertmanager"] {
        let failed = format!("\"message\":\"notification failed\",\"notifier\":\"{name}\"");
        assert_eq!(log.matches(&failed).count(), 1, "{name} failed once first, then delivered");
    }
    let (body, v) = notifiers(&f).await;
    for name in ["generic", "slack", "pagerduty", "alertmanager"] {
        let c = counts(&v, name);
        assert!(c["delivered"].as_u64().unwrap() >= 3, "{c}");
        assert_eq!(
            (c["retried"].as_u64(), c["given_up"].as_u64(), c["dropped"].as_u64()),
            (Some(1), Some(0), Some(0)),
            "{c}"
        );
    }
    assert_eq!(counts(&v, "slack")["webhook"], format!("https://127.0.0.1:{slack_port}/…"));
    let (_, metrics) = get(&f.admin("/metrics")).await;
    assert!(metrics.contains("flotilla_notifications_total{notifier=\"slack\",result=\"retried\"} 1"), "{metrics}");
    for secret in ["s3cretSlackToken", PD_KEY] {
        assert!(!log.contains(secret), "{secret} in the log");
        assert!(!body.contains(secret), "{secret} in /api/v1/notifiers");
        assert!(!metrics.contains(secret), "{secret} in /metrics");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_receivers_are_never_sent_to_and_refusals_are_not_retried() {
    let dir = scratch_dir("notify-trust");
    hook_pki(&dir);
    // `untrusted` names no CA: the system's roots do not know the throwaway one.
    let (untrusted_port, mut untrusted) = https_receiver(&dir, &[]).await;
    // `refusing` answers 400 to the first notification (a bad payload, a revoked URL).
    let (refusing_port, refusing) = https_receiver(&dir, &[400]).await;
    let mut refusing = Seen::new(refusing);
    let body = format!(
        r#"[watch]
resolution = "250ms"

[notifiers.untrusted]
webhook = "https://127.0.0.1:{untrusted_port}/hook"
attempts = 2

[notifiers.refusing]
webhook = "https://127.0.0.1:{refusing_port}/hook"
ca = "ca.pem"
attempts = 5

[[alarms]]
name = "no-data-breaching"
metric = "nothing_exports_this"
period = "1s"
threshold = 1
missing_data = "breaching"
notify = ["untrusted", "refusing"]

[[alarms]]
name = "no-data-breaching-too"
metric = "nothing_exports_this_either"
period = "1s"
threshold = 1
missing_data = "breaching"
notify = ["refusing"]
"#
    );
    let f = Flotilla::start_in(&dir, &body);
    // The refused notification was given up at once; the next one was delivered.
    let h = refusing.wait("a delivery after the refusal", |h| h.body["state"] == "ALARM").await;
    assert_eq!(h.path, "/hook");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, v) = notifiers(&f).await;
        let (u, r) = (counts(&v, "untrusted"), counts(&v, "refusing"));
        if u["given_up"] == 1 && r["given_up"] == 1 {
            assert_eq!((u["delivered"].as_u64(), u["retried"].as_u64()), (Some(0), Some(1)), "{u}");
            assert_eq!(
                (r["delivered"].as_u64(), r["retried"].as_u64()),
                (Some(1), Some(0)),
                "a 400 is not retried: {r}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(untrusted.try_recv().is_err(), "nothing reached the untrusted receiver");
    let log = f.log();
    assert!(log.contains("invalid peer certificate"), "the certificate check failed: {log}");
    assert!(log.contains("notification refused by the receiver; not retried"), "{log}");
}

//! Each format's payload against the receiver's documented shape: Slack's incoming webhook,
//! PagerDuty's Events API v2, Alertmanager's webhook (version 4) and Flotilla's own JSON.

use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_config::{AlarmConfig, AlarmStatistic, Comparison, MissingData, NotifierConfig, NotifierFormat, Severity};
use serde_json::{json, Value};

use super::event::{Event, Status};
use super::format::{fingerprint, render};
use crate::alarm::{AlarmState, Transition};

fn alarm_cfg() -> AlarmConfig {
    AlarmConfig {
        name: "high-5xx".into(),
        metric: "http_requests_5xx_rate".into(),
        labels: BTreeMap::from([("target_group".into(), "web".into())]),
        statistic: AlarmStatistic::Max,
        period: Duration::from_secs(60),
        evaluation_periods: 2,
        datapoints_to_alarm: 2,
        threshold: 0.0,
        comparison: Comparison::Greater,
        missing_data: MissingData::NotBreaching,
        notify: vec!["n".into()],
        cluster: false,
    }
}

fn transition(from: AlarmState, to: AlarmState, time: &str) -> Transition {
    Transition { time: time.into(), from, to, reason: "2 of the last 2 datapoints > 0".into() }
}

fn firing() -> Event {
    Event::alarm(&alarm_cfg(), &transition(AlarmState::Ok, AlarmState::Alarm, "2025-06-01T10:00:00Z"))
}

fn resolved() -> Event {
    let mut ev = Event::alarm(&alarm_cfg(), &transition(AlarmState::Alarm, AlarmState::Ok, "2025-06-01T10:05:00Z"));
    ev.started = Some("2025-06-01T10:00:00Z".into());
    ev
}

fn notifier(format: NotifierFormat) -> NotifierConfig {
    NotifierConfig {
        name: "n".into(),
        webhook: "https://127.0.0.1:1/hook".into(),
        format,
        ca: None,
        routing_key: (format == NotifierFormat::PagerDuty).then(|| "R0UTING".into()),
        severity: None,
        timeout: Duration::from_secs(1),
        attempts: 1,
    }
}

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    k.sort_unstable();
    k
}

#[test]
fn fingerprints_are_prometheus_label_set_fingerprints() {
    // prometheus/common model/signature_test.go.
    assert_eq!(fingerprint(&BTreeMap::new()), 14_695_981_039_346_656_037);
    let ls = BTreeMap::from([
        ("name".to_string(), "garland, briggs".to_string()),
        ("fear".to_string(), "love is not enough".to_string()),
    ]);
    assert_eq!(fingerprint(&ls), 5_799_056_148_416_392_346);
}

#[test]
fn generic_is_flotillas_json_for_every_change() {
    let v = render(&notifier(NotifierFormat::Generic), "host", &firing()).unwrap();
    assert_eq!(
        v,
        json!({
            "alarm": "high-5xx", "metric": "http_requests_5xx_rate", "labels": { "target_group": "web" },
            "state": "ALARM", "previous_state": "OK", "reason": "2 of the last 2 datapoints > 0",
            "time": "2025-06-01T10:00:00Z", "threshold": 0.0,
        })
    );
    let quiet = Event::alarm(&alarm_cfg(), &transition(AlarmState::InsufficientData, AlarmState::Ok, "t"));
    assert_eq!(quiet.status, Status::Changed);
    assert_eq!(render(&notifier(NotifierFormat::Generic), "host", &quiet).unwrap()["state"], "OK");
    // Pagers, chats and Alertmanager hear only of entering and leaving ALARM.
    for f in [NotifierFormat::Slack, NotifierFormat::PagerDuty, NotifierFormat::Alertmanager] {
        assert_eq!(render(&notifier(f), "host", &quiet), None, "{f:?}");
    }
}

#[test]
fn slack_incoming_webhook_text_and_blocks() {
    let mut ev = firing();
    ev.labels.insert("target_group".into(), "<!channel> & co".into());
    let v = render(&notifier(NotifierFormat::Slack), "host", &ev).unwrap();
    assert_eq!(keys(&v), ["blocks", "text"]);
    assert_eq!(v["text"], "[FIRING] alarm high-5xx is ALARM");
    let blocks = v["blocks"].as_array().unwrap();
    assert_eq!((blocks[0]["type"].as_str(), blocks[0]["text"]["type"].as_str()), (Some("section"), Some("mrkdwn")));
    let head = blocks[0]["text"]["text"].as_str().unwrap();
    assert!(head.starts_with(":red_circle: *FIRING* (critical) alarm high-5xx is ALARM\n2 of the last"), "{head}");
    assert_eq!(blocks[1]["type"], "context");
    let ctx = blocks[1]["elements"][0]["text"].as_str().unwrap();
    // A label cannot ping the channel: Slack's control characters are escaped.
    assert!(ctx.contains("target_group=`&lt;!channel&gt; &amp; co`") && !ctx.contains("<!"), "{ctx}");
    let v = render(&notifier(NotifierFormat::Slack), "host", &resolved()).unwrap();
    assert_eq!(v["text"], "[RESOLVED] alarm high-5xx is OK");
    assert!(v["blocks"][1]["elements"][0]["text"].as_str().unwrap().contains("since 2025-06-01T10:00:00Z"));
    // Long reasons are cut to Slack's 3000 characters per block.
    let mut long = firing();
    long.description = "é".repeat(5000);
    let v = render(&notifier(NotifierFormat::Slack), "host", &long).unwrap();
    let head = v["blocks"][0]["text"]["text"].as_str().unwrap();
    assert!(head.len() <= 3000 && head.ends_with('…'), "{}", head.len());
}

#[test]
fn pagerduty_events_v2_trigger_and_resolve_share_a_dedup_key() {
    let n = notifier(NotifierFormat::PagerDuty);
    let t = render(&n, "edge-1", &firing()).unwrap();
    assert_eq!(keys(&t), ["client", "dedup_key", "event_action", "payload", "routing_key"]);
    assert_eq!((t["event_action"].as_str(), t["routing_key"].as_str()), (Some("trigger"), Some("R0UTING")));
    assert_eq!(t["dedup_key"], "flotilla/alarm/high-5xx");
    let p = &t["payload"];
    assert_eq!(keys(p), ["class", "component", "custom_details", "severity", "source", "summary", "timestamp"]);
    assert_eq!(p["summary"], "alarm high-5xx is ALARM: 2 of the last 2 datapoints > 0");
    assert_eq!((p["source"].as_str(), p["severity"].as_str()), (Some("edge-1"), Some("critical")));
    assert_eq!((p["class"].as_str(), p["component"].as_str()), (Some("alarm"), Some("web")));
    assert_eq!(p["timestamp"], "2025-06-01T10:00:00Z");
    assert_eq!(p["custom_details"]["alarm"], "high-5xx");
    let r = render(&n, "edge-1", &resolved()).unwrap();
    assert_eq!(
        r,
        json!({ "routing_key": "R0UTING", "event_action": "resolve", "dedup_key": "flotilla/alarm/high-5xx" })
    );
    // The notifier's severity wins; PagerDuty's limits hold.
    let mut n = n;
    n.severity = Some(Severity::Warning);
    let mut long = firing();
    long.key = format!("alarm/{}", "x".repeat(400));
    long.description = "y".repeat(2000);
    let t = render(&n, "edge-1", &long).unwrap();
    assert_eq!(t["payload"]["severity"], "warning");
    assert!(t["dedup_key"].as_str().unwrap().len() <= 255);
    assert!(t["payload"]["summary"].as_str().unwrap().len() <= 1024);
}

#[test]
fn alertmanager_webhook_version_4() {
    let n = notifier(NotifierFormat::Alertmanager);
    let f = render(&n, "host", &firing()).unwrap();
    assert_eq!(
        keys(&f),
        [
            "alerts",
            "commonAnnotations",
            "commonLabels",
            "externalURL",
            "groupKey",
            "groupLabels",
            "receiver",
            "status",
            "truncatedAlerts",
            "version"
        ]
    );
    assert_eq!(
        (f["version"].as_str(), f["status"].as_str(), f["receiver"].as_str()),
        (Some("4"), Some("firing"), Some("n"))
    );
    assert_eq!(f["groupKey"], "{}:{alertname=\"high-5xx\"}");
    assert_eq!(f["truncatedAlerts"], 0);
    assert_eq!(f["groupLabels"], json!({ "alertname": "high-5xx" }));
    let a = &f["alerts"][0];
    assert_eq!(keys(a), ["annotations", "endsAt", "fingerprint", "generatorURL", "labels", "startsAt", "status"]);
    let labels = json!({
        "alertname": "high-5xx", "kind": "alarm", "metric": "http_requests_5xx_rate",
        "severity": "critical", "target_group": "web",
    });
    assert_eq!(a["labels"], labels);
    assert_eq!(f["commonLabels"], labels);
    assert_eq!(a["annotations"]["summary"], "alarm high-5xx is ALARM");
    assert_eq!(a["annotations"]["description"], "2 of the last 2 datapoints > 0");
    assert_eq!(
        (a["startsAt"].as_str(), a["endsAt"].as_str()),
        (Some("2025-06-01T10:00:00Z"), Some("0001-01-01T00:00:00Z"))
    );
    let fp = a["fingerprint"].as_str().unwrap();
    let lm: BTreeMap<String, String> = serde_json::from_value(labels).unwrap();
    assert_eq!(fp, format!("{:016x}", fingerprint(&lm)));
    let r = render(&n, "host", &resolved()).unwrap();
    let ra = &r["alerts"][0];
    assert_eq!((r["status"].as_str(), ra["status"].as_str()), (Some("resolved"), Some("resolved")));
    assert_eq!(
        (ra["startsAt"].as_str(), ra["endsAt"].as_str()),
        (Some("2025-06-01T10:00:00Z"), Some("2025-06-01T10:05:00Z"))
    );
    assert_eq!(ra["fingerprint"], fp, "firing and resolved are the same alert");
}

#[test]
fn slo_and_budget_events() {
    let rates = BTreeMap::from([("1h", Some(20.0)), ("5m", Some(30.5)), ("1d", None)]);
    let fast =
        Event::slo("web-avail", "web", "fast_burn", true, "2025-06-01T10:00:00Z".into(), Some(&rates), Some(0.5));
    let slow = Event::slo("web-avail", "web", "slow_burn", false, "t".into(), None, None);
    assert_eq!(
        (fast.status, fast.severity, fast.key.as_str()),
        (Status::Firing, Severity::Critical, "slo/web-avail/fast_burn")
    );
    assert_eq!((slow.status, slow.severity), (Status::Resolved, Severity::Warning));
    let pd = render(&notifier(NotifierFormat::PagerDuty), "h", &fast).unwrap();
    assert_eq!(pd["dedup_key"], "flotilla/slo/web-avail/fast_burn");
    assert_eq!(
        pd["payload"]["summary"],
        "SLO web-avail (web): fast burn firing: burn rates: 1h 20.00, 5m 30.50; error budget left: 50.0 %"
    );
    assert_eq!(render(&notifier(NotifierFormat::Generic), "h", &fast).unwrap()["state"], "firing");
    let am = render(&notifier(NotifierFormat::Alertmanager), "h", &slow).unwrap();
    assert_eq!(am["alerts"][0]["labels"]["alert"], "slow_burn");
    assert_eq!(am["alerts"][0]["labels"]["severity"], "warning");

    let alert = crate::budget::BudgetAlert {
        kind: "forecast",
        threshold: 0.8,
        view: crate::budget::BudgetView {
            currency: "EUR".into(),
            monthly: 60.0,
            spent: 20.0,
            forecast: 50.0,
            hourly: 0.1,
            by_group: BTreeMap::new(),
            alerts_fired: vec![],
            capped: false,
        },
    };
    let b = Event::budget(&alert, "2025-06-12T08:00:00Z".into());
    assert_eq!((b.status, b.key.as_str()), (Status::Notice, "budget/2025-06/forecast/80"));
    let pd = render(&notifier(NotifierFormat::PagerDuty), "h", &b).unwrap();
    assert_eq!((pd["event_action"].as_str(), pd["payload"]["severity"].as_str()), (Some("trigger"), Some("warning")));
    assert_eq!(render(&notifier(NotifierFormat::Generic), "h", &b).unwrap()["kind"], "forecast");
    assert_eq!(render(&notifier(NotifierFormat::Alertmanager), "h", &b).unwrap()["status"], "firing");
}

#[tokio::test]
async fn a_resolve_says_since_when_it_fired() {
    let hub = super::Hub::start(std::iter::empty());
    let mut f = firing();
    hub.stamp(&mut f);
    let mut again = Event::alarm(&alarm_cfg(), &transition(AlarmState::Ok, AlarmState::Alarm, "2025-06-01T10:01:00Z"));
    hub.stamp(&mut again);
    let mut r = Event::alarm(&alarm_cfg(), &transition(AlarmState::Alarm, AlarmState::Ok, "2025-06-01T10:05:00Z"));
    hub.stamp(&mut r);
    assert_eq!(r.started.as_deref(), Some("2025-06-01T10:00:00Z"));
    let mut r2 = Event::alarm(&alarm_cfg(), &transition(AlarmState::Alarm, AlarmState::Ok, "2025-06-01T10:06:00Z"));
    hub.stamp(&mut r2);
    assert_eq!(r2.started, None, "forgotten once resolved");
}

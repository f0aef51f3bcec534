//! One [`Event`] in each receiver's own format: Flotilla's JSON, a Slack message, a PagerDuty
//! Events v2 event, an Alertmanager webhook payload. `None`: this format does not carry it.

use std::collections::BTreeMap;

use flotilla_config::{NotifierConfig, NotifierFormat, Severity};
use serde_json::{json, Value};

use super::event::{Event, Status};

/// The JSON to POST for `ev` to the notifier `cfg`, or None when its format skips such events.
/// `source` names this machine (PagerDuty's `source`).
pub fn render(cfg: &NotifierConfig, source: &str, ev: &Event) -> Option<Value> {
    let severity = cfg.severity.unwrap_or(ev.severity);
    match cfg.format {
        NotifierFormat::Generic => Some(ev.generic.clone()),
        NotifierFormat::Slack => slack(ev, severity),
        NotifierFormat::PagerDuty => pagerduty(ev, severity, cfg.routing_key.as_deref().unwrap_or(""), source),
        NotifierFormat::Alertmanager => alertmanager(ev, severity, &cfg.name),
    }
}

/// At most `max` bytes of `s`, cut at a character boundary, with "…" when cut.
fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Slack's mrkdwn escaping: `&`, `<` and `>` are control characters (`<!channel>`, links), so a
/// label value cannot mention everyone or smuggle a link.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A Slack incoming-webhook message: `text` (what notifications and old clients show) and two
/// Block Kit blocks (headline with the reason; the labels and times). Block texts are capped
/// at Slack's 3000 characters.
pub fn slack(ev: &Event, severity: Severity) -> Option<Value> {
    let (icon, word) = match ev.status {
        Status::Firing => (":red_circle:", "FIRING"),
        Status::Resolved => (":large_green_circle:", "RESOLVED"),
        Status::Notice => (":warning:", "NOTICE"),
        Status::Changed => return None,
    };
    let summary = slack_escape(&ev.summary);
    let headline = format!("{icon} *{word}* ({}) {summary}\n{}", severity.as_str(), slack_escape(&ev.description));
    let mut context: Vec<String> = ev
        .labels
        .iter()
        .filter(|(k, _)| *k != "alertname")
        .map(|(k, v)| format!("{}=`{}`", slack_escape(k), slack_escape(v)))
        .collect();
    if let Some(s) = &ev.started {
        context.push(format!("since {}", slack_escape(s)));
    }
    context.push(slack_escape(&ev.at));
    Some(json!({
        "text": clip(&format!("[{word}] {summary}"), 3000),
        "blocks": [
            { "type": "section", "text": { "type": "mrkdwn", "text": clip(&headline, 3000) } },
            { "type": "context", "elements": [ { "type": "mrkdwn", "text": clip(&context.join(" · "), 3000) } ] },
        ],
    }))
}

/// A PagerDuty Events API v2 event: `trigger` when something fires (or a notice), `resolve`
/// when it is over, both with the same `dedup_key` so PagerDuty opens and closes one incident.
pub fn pagerduty(ev: &Event, severity: Severity, routing_key: &str, source: &str) -> Option<Value> {
    // PagerDuty's limits: 255 characters of dedup key, 1024 of summary.
    let dedup_key = clip(&format!("flotilla/{}", ev.key), 255);
    match ev.status {
        Status::Changed => None,
        Status::Resolved => Some(json!({
            "routing_key": routing_key,
            "event_action": "resolve",
            "dedup_key": dedup_key,
        })),
        Status::Firing | Status::Notice => {
            let mut payload = json!({
                "summary": clip(&format!("{}: {}", ev.summary, ev.description), 1024),
                "source": source,
                "severity": severity.as_str(),
                "timestamp": ev.at,
                "class": ev.labels.get("kind").cloned().unwrap_or_default(),
                "custom_details": ev.generic,
            });
            if let Some(tg) = ev.labels.get("target_group") {
                payload["component"] = json!(tg);
            }
            Some(json!({
                "routing_key": routing_key,
                "event_action": "trigger",
                "dedup_key": dedup_key,
                "client": "Flotilla",
                "payload": payload,
            }))
        }
    }
}

/// Alertmanager's "zero" time: what `endsAt` says while an alert is firing.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// Alertmanager's webhook payload (version 4) with one alert, as Alertmanager itself would POST
/// it to a webhook receiver: labels (`alertname`, `severity`, …), annotations (`summary`,
/// `description`), `startsAt`/`endsAt`, and the fingerprint Alertmanager computes from the
/// labels, so receivers that group or deduplicate by it work unchanged.
pub fn alertmanager(ev: &Event, severity: Severity, receiver: &str) -> Option<Value> {
    let status = match ev.status {
        Status::Firing | Status::Notice => "firing",
        Status::Resolved => "resolved",
        Status::Changed => return None,
    };
    let mut labels = ev.labels.clone();
    labels.insert("severity".into(), severity.as_str().into());
    let annotations = BTreeMap::from([("summary", ev.summary.as_str()), ("description", ev.description.as_str())]);
    let (starts, ends) = match ev.status {
        Status::Resolved => (ev.started.as_deref().unwrap_or(&ev.at), ev.at.as_str()),
        _ => (ev.at.as_str(), ZERO_TIME),
    };
    let alertname = labels.get("alertname").cloned().unwrap_or_default();
    Some(json!({
        "version": "4",
        "groupKey": format!("{{}}:{{alertname={}}}", json!(alertname)),
        "truncatedAlerts": 0,
        "status": status,
        "receiver": receiver,
        "groupLabels": { "alertname": alertname },
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": "",
        "alerts": [{
            "status": status,
            "labels": labels,
            "annotations": annotations,
            "startsAt": starts,
            "endsAt": ends,
            "generatorURL": "",
            "fingerprint": format!("{:016x}", fingerprint(&labels)),
        }],
    }))
}

/// Prometheus's label-set fingerprint (`model.LabelSet.Fingerprint`): FNV-1a 64 over each
/// name and value in name order, each followed by the separator byte 0xff.
pub fn fingerprint(labels: &BTreeMap<String, String>) -> u64 {
    const OFFSET: u64 = 14_695_981_039_346_656_037;
    const PRIME: u64 = 1_099_511_628_211;
    let mut h = OFFSET;
    let mut add = |bytes: &[u8]| {
        for b in bytes.iter().chain([0xffu8].iter()) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(PRIME);
        }
    };
    for (k, v) in labels {
        add(k.as_bytes());
        add(v.as_bytes());
    }
    h
}

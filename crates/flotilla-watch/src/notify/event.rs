//! What a notification says, before any receiver's format: one [`Event`] per alarm transition,
//! SLO burn alert change or budget alert, built once and rendered per notifier.

use std::collections::BTreeMap;

use flotilla_config::{AlarmConfig, Severity};

use crate::alarm::{AlarmState, Transition};

/// Where an event stands in the life of what it reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Something went wrong: an alarm entered ALARM, a burn alert fired.
    Firing,
    /// It is over: the alarm left ALARM, the burn alert stopped.
    Resolved,
    /// Said once and never resolved: a budget threshold crossed.
    Notice,
    /// Any other change (an alarm between OK and INSUFFICIENT_DATA): only Flotilla's own
    /// format carries these; a pager or a chat channel does not need them.
    Changed,
}

#[derive(Debug, Clone)]
pub struct Event {
    /// What fires and resolves, stable across both (`alarm/NAME`, `slo/NAME/fast_burn`): the
    /// PagerDuty dedup key and, through the labels, the Alertmanager fingerprint.
    pub key: String,
    pub status: Status,
    /// Before a notifier's `severity` override.
    pub severity: Severity,
    /// Identifying labels: `alertname`, `kind` and what the alarm or SLO is about.
    pub labels: BTreeMap<String, String>,
    /// One line for a human.
    pub summary: String,
    /// Why (the alarm's reason, the burn rates).
    pub description: String,
    /// When it happened (RFC 3339).
    pub at: String,
    /// When what resolves here started firing, if this process saw it (RFC 3339).
    pub started: Option<String>,
    /// Flotilla's own JSON for this event, as the generic format sends it.
    pub generic: serde_json::Value,
}

impl Event {
    pub fn alarm(cfg: &AlarmConfig, tr: &Transition) -> Self {
        let status = match (tr.from, tr.to) {
            (_, AlarmState::Alarm) => Status::Firing,
            (AlarmState::Alarm, _) => Status::Resolved,
            _ => Status::Changed,
        };
        let mut labels: BTreeMap<String, String> = cfg.labels.clone();
        labels.insert("alertname".into(), cfg.name.clone());
        labels.insert("kind".into(), "alarm".into());
        labels.insert("metric".into(), cfg.metric.clone());
        let state = serde_json::to_value(tr.to).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        Self {
            key: format!("alarm/{}", cfg.name),
            status,
            severity: Severity::Critical,
            labels,
            summary: format!("alarm {} is {state}", cfg.name),
            description: tr.reason.clone(),
            at: tr.time.clone(),
            started: None,
            generic: serde_json::json!({
                "alarm": cfg.name,
                "metric": cfg.metric,
                "labels": cfg.labels,
                "state": tr.to,
                "previous_state": tr.from,
                "reason": tr.reason,
                "time": tr.time,
                "threshold": cfg.threshold,
            }),
        }
    }

    /// A burn alert of an SLO fired or stopped. Fast burn pages (critical), slow burn tickets
    /// (warning), as the SRE workbook has it.
    pub fn slo(
        name: &str,
        target_group: &str,
        alert: &str,
        firing: bool,
        at: String,
        burn_rates: Option<&BTreeMap<&'static str, Option<f64>>>,
        budget_remaining: Option<f64>,
    ) -> Self {
        let labels = BTreeMap::from([
            ("alertname".to_string(), name.to_string()),
            ("kind".to_string(), "slo".to_string()),
            ("alert".to_string(), alert.to_string()),
            ("target_group".to_string(), target_group.to_string()),
        ]);
        let rates: Vec<String> =
            burn_rates.into_iter().flatten().filter_map(|(w, r)| r.map(|r| format!("{w} {r:.2}"))).collect();
        let budget = budget_remaining.map_or("no traffic".to_string(), |b| format!("{:.1} %", b * 100.0));
        Self {
            key: format!("slo/{name}/{alert}"),
            status: if firing { Status::Firing } else { Status::Resolved },
            severity: if alert == "fast_burn" { Severity::Critical } else { Severity::Warning },
            labels,
            summary: format!(
                "SLO {name} ({target_group}): {} {}",
                alert.replace('_', " "),
                if firing { "firing" } else { "resolved" }
            ),
            description: format!("burn rates: {}; error budget left: {budget}", rates.join(", ")),
            generic: serde_json::json!({
                "slo": name,
                "target_group": target_group,
                "alert": alert,
                "state": if firing { "firing" } else { "resolved" },
                "time": at,
                "burn_rates": burn_rates,
                "error_budget_remaining": budget_remaining,
            }),
            at,
            started: None,
        }
    }

    /// A threshold of the account's monthly budget crossed, by actual or forecast spend.
    pub fn budget(alert: &crate::budget::BudgetAlert, at: String) -> Self {
        let v = &alert.view;
        let month = at.get(..7).unwrap_or("").to_string();
        let pct = alert.threshold * 100.0;
        let labels = BTreeMap::from([
            ("alertname".to_string(), "budget".to_string()),
            ("kind".to_string(), "budget".to_string()),
            ("budget_kind".to_string(), alert.kind.to_string()),
            ("threshold".to_string(), format!("{pct}%")),
            ("month".to_string(), month.clone()),
        ]);
        Self {
            key: format!("budget/{month}/{}/{pct}", alert.kind),
            status: Status::Notice,
            severity: Severity::Warning,
            labels,
            summary: format!("{} spend passed {pct} % of the monthly budget", alert.kind),
            description: format!(
                "spent {:.2} {cur}, forecast {:.2} {cur}, budget {:.2} {cur}",
                v.spent,
                v.forecast,
                v.monthly,
                cur = v.currency
            ),
            generic: serde_json::json!({
                "budget": "monthly",
                "kind": alert.kind,
                "threshold": alert.threshold,
                "spent": v.spent,
                "forecast": v.forecast,
                "monthly": v.monthly,
                "currency": v.currency,
                "time": at,
            }),
            at,
            started: None,
        }
    }
}

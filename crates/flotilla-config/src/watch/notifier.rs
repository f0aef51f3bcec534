//! `[notifiers.NAME]`, typed: where alarm, SLO and budget notifications go and in which format
//! (the receiver's own: Slack, PagerDuty Events v2, Alertmanager's webhook, or Flotilla's JSON).
//!
//! A webhook URL and a routing key are credentials (a Slack incoming-webhook URL *is* its
//! token), so `Debug` shows neither: only the URL's scheme and host ([`shown_url`]).

use std::path::PathBuf;
use std::time::Duration;

/// What a notifier's POST looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifierFormat {
    /// Flotilla's own JSON (one object per change; every alarm transition).
    Generic,
    /// A Slack incoming webhook (`text` plus Block Kit blocks).
    Slack,
    /// PagerDuty Events API v2: trigger and resolve with one dedup key per alarm or SLO alert.
    PagerDuty,
    /// Alertmanager's webhook payload (version 4), for receivers written for Alertmanager.
    Alertmanager,
}

impl NotifierFormat {
    pub const NAMES: &'static str = "generic, slack, pagerduty, alertmanager";

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "generic" => Self::Generic,
            "slack" => Self::Slack,
            "pagerduty" => Self::PagerDuty,
            "alertmanager" => Self::Alertmanager,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Generic => "generic",
            Self::Slack => "slack",
            Self::PagerDuty => "pagerduty",
            Self::Alertmanager => "alertmanager",
        }
    }
}

/// PagerDuty's severities (also Alertmanager's `severity` label and Slack's wording).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Critical,
    Error,
    Warning,
    Info,
}

impl Severity {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "critical" => Self::Critical,
            "error" => Self::Error,
            "warning" => Self::Warning,
            "info" => Self::Info,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Critical => "critical",
            Self::Error => "error",
            Self::Warning => "warning",
            Self::Info => "info",
        }
    }
}

/// `ca = "file.pem"`: the only certificate authorities an https:// webhook is checked against
/// (instead of the system's), read and parsed when the config loads.
#[derive(Debug, Clone, PartialEq)]
pub struct TrustedCa {
    pub path: PathBuf,
    /// Each certificate of the file, DER-encoded.
    pub certs: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq)]
pub struct NotifierConfig {
    pub name: String,
    /// Where the POST goes: `https://…`, or `http://` to a loopback address. A secret: never log
    /// it; [`NotifierConfig::shown_webhook`] is what may be shown.
    pub webhook: String,
    pub format: NotifierFormat,
    pub ca: Option<TrustedCa>,
    /// PagerDuty's integration key (`format = "pagerduty"` only). A secret.
    pub routing_key: Option<String>,
    /// Overrides the severity of every notification sent here (default: alarms and fast burns
    /// critical, slow burns and budget alerts warning).
    pub severity: Option<Severity>,
    pub timeout: Duration,
    /// Attempts per notification (backoff 1 s, 2 s, 4 s, … at most 60 s).
    pub attempts: u32,
}

impl NotifierConfig {
    /// The webhook as it may appear in logs and API answers: scheme and host only.
    pub fn shown_webhook(&self) -> String {
        shown_url(&self.webhook)
    }
}

impl std::fmt::Debug for NotifierConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifierConfig")
            .field("name", &self.name)
            .field("webhook", &self.shown_webhook())
            .field("format", &self.format)
            .field("ca", &self.ca.as_ref().map(|c| &c.path))
            .field("routing_key", &self.routing_key.as_ref().map(|_| "<hidden>"))
            .field("severity", &self.severity)
            .field("timeout", &self.timeout)
            .field("attempts", &self.attempts)
            .finish()
    }
}

/// `scheme://host[:port]/…`: a URL without what may be secret in it (user info, path, query).
pub fn shown_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let more = if rest.len() > authority.len() { "/…" } else { "" };
    format!("{scheme}://{host}{more}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_urls_keep_no_secret() {
        assert_eq!(shown_url("https://hooks.slack.com/services/T0/B0/XyZ"), "https://hooks.slack.com/…");
        assert_eq!(shown_url("http://127.0.0.1:9000"), "http://127.0.0.1:9000");
        assert_eq!(shown_url("https://u:pw@h:1/p?token=x"), "https://h:1/…");
        assert_eq!(shown_url("https://h?token=x"), "https://h/…");
    }
}

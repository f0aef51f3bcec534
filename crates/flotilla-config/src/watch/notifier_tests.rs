//! `[notifiers.NAME]`: formats, URLs, the CA file, PagerDuty's key, and that no message, warning
//! or `Debug` output repeats a secret.

use std::path::Path;

use crate::{parse, Config, NotifierFormat, Severity};

fn env(name: &str) -> Option<String> {
    match name {
        "PD_KEY" => Some("R0UTINGKEY0123456789abcdefABCDEF".into()),
        "SLACK_HOOK" => Some("https://hooks.slack.com/services/T000/B000/s3cretpath".into()),
        _ => None,
    }
}

fn load(dir: &Path, text: &str) -> Result<Config, crate::LoadError> {
    parse(&dir.join("flotilla.toml"), text, &env)
}

/// The rendered errors of an invalid config, with the scratch directory written as `DIR`.
fn errors(dir: &Path, text: &str) -> Vec<String> {
    let err = load(dir, text).expect_err("config should be invalid");
    let d = dir.display().to_string();
    err.errors().iter().map(|e| e.to_string().replace(&d, "DIR")).collect()
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("flotilla-config-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const PEM: &str = "-----BEGIN CERTIFICATE-----\nAAECAwQ=\n-----END CERTIFICATE-----\n";

#[test]
fn each_format_with_what_it_needs() {
    let dir = scratch("formats");
    std::fs::write(dir.join("ca.pem"), PEM).unwrap();
    let c = load(
        &dir,
        r#"
[notifiers.plain]
webhook = "http://127.0.0.1:9999/hook"
[notifiers.chat]
format = "slack"
webhook = "${SLACK_HOOK}"
[notifiers.pager]
format = "pagerduty"
routing_key = "${PD_KEY}"
severity = "error"
[notifiers.am]
format = "alertmanager"
webhook = "https://am.internal:9443/hook"
ca = "ca.pem"
"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let n = &c.notifiers;
    assert_eq!(n["plain"].format, NotifierFormat::Generic);
    assert_eq!(n["chat"].format, NotifierFormat::Slack);
    assert_eq!(n["chat"].webhook, "https://hooks.slack.com/services/T000/B000/s3cretpath");
    assert_eq!(n["pager"].webhook, "https://events.pagerduty.com/v2/enqueue", "PagerDuty's URL by default");
    assert_eq!(n["pager"].routing_key.as_deref(), Some("R0UTINGKEY0123456789abcdefABCDEF"));
    assert_eq!(n["pager"].severity, Some(Severity::Error));
    let ca = n["am"].ca.as_ref().unwrap();
    assert_eq!((ca.path.clone(), ca.certs.clone()), (dir.join("ca.pem"), vec![vec![0, 1, 2, 3, 4]]));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    // Debug shows neither the Slack URL's path nor the key.
    let shown = format!("{c:?}");
    assert!(!shown.contains("s3cretpath") && !shown.contains("R0UTINGKEY"), "{shown}");
    assert!(shown.contains("https://hooks.slack.com/…") && shown.contains("<hidden>"), "{shown}");
}

#[test]
fn bad_notifiers_name_the_key_and_never_the_secret() {
    let dir = scratch("bad");
    std::fs::write(dir.join("empty.pem"), "no certificate here\n").unwrap();
    let got = errors(
        &dir,
        r#"[notifiers.a]
format = "teams"
webhook = "https://h/"
[notifiers.b]
webhook = "http://hooks.example.com/T0/s3cret"
[notifiers.c]
format = "pagerduty"
[notifiers.d]
webhook = "https://h/"
routing_key = "${PD_KEY}"
[notifiers.e]
webhook = "https://user:s3cret@h/"
ca = "missing.pem"
[notifiers.f]
webhook = "https://h/"
ca = "empty.pem"
severity = "high"
[notifiers.g]
webhook = "http://127.0.0.1:1/"
ca = "empty.pem"
[notifiers.h]
format = "slack"
"#,
    );
    assert_eq!(
        got,
        vec![
            "DIR/flotilla.toml:2:10: notifiers.a.format: \"teams\" must be one of generic, slack, pagerduty, alertmanager",
            "DIR/flotilla.toml:5:11: notifiers.b.webhook: http://hooks.example.com/…: http:// only to a loopback address (127.0.0.1, [::1], localhost); use https:// (with `ca` for a private CA)",
            "DIR/flotilla.toml:6:1: notifiers.c.routing_key is required with format = \"pagerduty\" (e.g. \"${PAGERDUTY_ROUTING_KEY}\")",
            "DIR/flotilla.toml:10:15: notifiers.d.routing_key is only for format = \"pagerduty\"",
            "DIR/flotilla.toml:12:11: notifiers.e.webhook: https://h/…: user and password in the URL are not supported",
            "DIR/flotilla.toml:13:6: notifiers.e.ca: cannot read DIR/missing.pem: No such file or directory (os error 2)",
            "DIR/flotilla.toml:16:6: notifiers.f.ca: DIR/empty.pem holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            "DIR/flotilla.toml:17:12: notifiers.f.severity: \"high\" must be critical, error, warning or info",
            "DIR/flotilla.toml:20:6: notifiers.g.ca: DIR/empty.pem holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            "DIR/flotilla.toml:20:6: notifiers.g.ca: a CA is only used for an https:// webhook",
            "DIR/flotilla.toml:21:1: notifiers.h.webhook is required (the https:// URL the notifications are POSTed to)",
        ]
    );
    assert!(got.iter().all(|e| !e.contains("s3cret")), "{got:#?}");
}

#[test]
fn a_routing_key_written_in_the_file_warns() {
    let dir = scratch("literal");
    let c = load(&dir, "[notifiers.p]\nformat = \"pagerduty\"\nrouting_key = \"abc123\"\n").unwrap();
    assert_eq!(c.notifiers["p"].routing_key.as_deref(), Some("abc123"));
    assert!(c.warnings.iter().any(|w| w.contains("notifiers.p.routing_key is written in the config file")));
    assert!(c.warnings.iter().all(|w| !w.contains("abc123")), "{:?}", c.warnings);
}

#[test]
fn urls() {
    use super::validate_notifier::check_url;
    for ok in [
        "https://hooks.slack.com/services/T/B/x",
        "https://10.0.0.1:8443/",
        "https://h",
        "http://127.0.0.1:9999/hook",
        "http://[::1]:80/",
        "http://localhost/x",
        "http://127.1.2.3",
    ] {
        assert_eq!(check_url(ok), Ok(()), "{ok}");
    }
    for bad in [
        "http://hooks.example",
        "http://10.0.0.1/",
        "ftp://x",
        "https://",
        "https://:80/",
        "https://h:port/",
        "https://h/a b",
        "https://a@h/",
        "//h/",
    ] {
        assert!(check_url(bad).is_err(), "{bad}");
    }
}

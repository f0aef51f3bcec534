//! Raw → typed for `[notifiers.NAME]`: the URL (https://, or http:// to loopback only), the
//! format and what it needs (a PagerDuty routing key), the trusted CA file, the severity.
//!
//! Messages never repeat a webhook URL or a key: they may hold credentials, and config errors
//! end up in logs. Only the URL's scheme and host are quoted.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use super::model::*;
use super::raw::RawNotifier;
use crate::ctx::{valid_name, Ctx};
use crate::raw::S;

/// Where PagerDuty's Events API v2 takes events (used when a pagerduty notifier names no URL).
pub const PAGERDUTY_EVENTS: &str = "https://events.pagerduty.com/v2/enqueue";

/// A `ca` file larger than this is refused (a bundle of every public root is ~200 KiB).
const MAX_CA_FILE: u64 = 1 << 20;

pub(crate) fn notifiers(
    cx: &mut Ctx<'_>,
    raw: &BTreeMap<S<String>, S<RawNotifier>>,
) -> BTreeMap<String, NotifierConfig> {
    let mut out = BTreeMap::new();
    for (name, n) in raw {
        let key = |k: &str| format!("notifiers.{}.{k}", name.get_ref());
        if !valid_name(name.get_ref()) {
            cx.err(name, format!("notifier name {:?} must be letters, digits, '-' or '_'", name.get_ref()));
        }
        let r = n.get_ref();
        let format = match &r.format {
            None => NotifierFormat::Generic,
            Some(f) => NotifierFormat::parse(f.get_ref()).unwrap_or_else(|| {
                cx.err(f, format!("{}: {:?} must be one of {}", key("format"), f.get_ref(), NotifierFormat::NAMES));
                NotifierFormat::Generic
            }),
        };
        let webhook = match (&r.webhook, format) {
            (Some(hook), _) => {
                let url = cx.expand(hook, &key("webhook"));
                if let Err(e) = check_url(&url) {
                    cx.err(hook, format!("{}: {e}", key("webhook")));
                }
                url
            }
            (None, NotifierFormat::PagerDuty) => PAGERDUTY_EVENTS.to_string(),
            (None, _) => {
                cx.err(n, format!("{} is required (the https:// URL the notifications are POSTed to)", key("webhook")));
                continue;
            }
        };
        let routing_key = routing_key(cx, r, format, n, &key("routing_key"));
        let ca = r.ca.as_ref().and_then(|c| trusted_ca(cx, c, &key("ca")));
        if let (Some(c), false) = (&r.ca, webhook.starts_with("https://")) {
            cx.err(c, format!("{}: a CA is only used for an https:// webhook", key("ca")));
        }
        let severity = r.severity.as_ref().and_then(|s| {
            let parsed = Severity::parse(s.get_ref());
            if parsed.is_none() {
                cx.err(s, format!("{}: {:?} must be critical, error, warning or info", key("severity"), s.get_ref()));
            }
            parsed
        });
        let timeout = cx.duration(&r.timeout, &key("timeout"), Duration::from_secs(5));
        if timeout.is_zero() {
            if let Some(t) = &r.timeout {
                cx.err(t, format!("{} must be greater than 0", key("timeout")));
            }
        }
        let attempts = cx.int(&r.attempts, &key("attempts"), 1..=20, 5) as u32;
        out.insert(
            name.get_ref().clone(),
            NotifierConfig {
                name: name.get_ref().clone(),
                webhook,
                format,
                ca,
                routing_key,
                severity,
                timeout,
                attempts,
            },
        );
    }
    out
}

/// PagerDuty needs its integration key; no other format takes one. Written in the file rather
/// than as `${VAR}` it works, with a warning (the file is then a secret too).
fn routing_key(
    cx: &mut Ctx<'_>,
    r: &RawNotifier,
    format: NotifierFormat,
    table: &S<RawNotifier>,
    key: &str,
) -> Option<String> {
    match (&r.routing_key, format) {
        (Some(k), NotifierFormat::PagerDuty) => {
            if !k.get_ref().contains("${") {
                cx.warnings.push(format!(
                    "{key} is written in the config file; prefer \"${{PAGERDUTY_ROUTING_KEY}}\" so the key stays out of it"
                ));
            }
            let v = cx.expand(k, key);
            if v.is_empty() || v.len() > 256 || !v.bytes().all(|b| b.is_ascii_graphic()) {
                cx.err(
                    k,
                    format!("{key} must be PagerDuty's integration key (printable, no spaces, at most 256 bytes)"),
                );
                return None;
            }
            Some(v)
        }
        (None, NotifierFormat::PagerDuty) => {
            cx.err(
                table,
                format!("{key} is required with format = \"pagerduty\" (e.g. \"${{PAGERDUTY_ROUTING_KEY}}\")"),
            );
            None
        }
        (Some(k), _) => {
            cx.err(k, format!("{key} is only for format = \"pagerduty\""));
            None
        }
        (None, _) => None,
    }
}

/// Reads `ca` (relative to the config file): at least one PEM certificate and nothing broken.
fn trusted_ca(cx: &mut Ctx<'_>, v: &S<String>, key: &str) -> Option<TrustedCa> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let path = cx.base_dir.join(cx.expand(v, key));
    let text = match std::fs::metadata(&path) {
        Ok(m) if m.len() > MAX_CA_FILE => Err(format!("{} is larger than 1 MiB", path.display())),
        Ok(_) => std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display())),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    };
    let text = match text {
        Ok(t) => t,
        Err(e) => {
            cx.err(v, format!("{key}: {e}"));
            return None;
        }
    };
    let certs: Result<Vec<Vec<u8>>, _> =
        CertificateDer::pem_slice_iter(&text).map(|c| c.map(|c| c.as_ref().to_vec())).collect();
    match certs {
        Ok(certs) if !certs.is_empty() => Some(TrustedCa { path, certs }),
        Ok(_) => {
            cx.err(v, format!("{key}: {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path.display()));
            None
        }
        Err(e) => {
            cx.err(v, format!("{key}: {} is not valid PEM: {e}", path.display()));
            None
        }
    }
}

/// `https://host[:port][/path]`, or `http://` to a loopback host (a receiver on this machine,
/// a test): anything else would carry the notification, and the credentials in it, in clear
/// text. The error quotes only the scheme and host.
pub(crate) fn check_url(url: &str) -> Result<(), String> {
    let shown = shown_url(url);
    let (https, rest) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
        (Some(rest), _) => (true, rest),
        (_, Some(rest)) => (false, rest),
        _ => return Err("must be an https:// URL (or http:// to a loopback address)".into()),
    };
    if url.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(format!("{shown}: no spaces or control characters"));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return Err(format!("{shown}: user and password in the URL are not supported"));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !authority.ends_with(']') => (h, Some(p)),
        _ => (authority, None),
    };
    if host.is_empty() || port.is_some_and(|p| p.parse::<u16>().is_err()) {
        return Err(format!("{shown}: expected scheme://host[:port][/path]"));
    }
    if !https && !loopback(host) {
        return Err(format!(
            "{shown}: http:// only to a loopback address (127.0.0.1, [::1], localhost); use https:// (with `ca` for a private CA)"
        ));
    }
    Ok(())
}

fn loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

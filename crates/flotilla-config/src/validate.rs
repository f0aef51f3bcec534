//! Raw → typed: checks every value, collects every error with its location, fills defaults.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::ctx::{http_token, resolve, valid_name, Ctx};
use crate::model::*;
use crate::raw::*;
use crate::units;

pub(crate) fn config(cx: &mut Ctx<'_>, raw: RawConfig, source: PathBuf) -> Option<Config> {
    let edge = edge(cx, raw.edge.as_ref());
    let admin = raw.admin.as_ref().and_then(|a| admin(cx, a));
    let mut target_groups = BTreeMap::new();
    for (name, tg) in &raw.target_groups {
        if !valid_name(name.get_ref()) {
            cx.err(name, format!("target group name {:?} must be letters, digits, '-' or '_'", name.get_ref()));
        }
        let g = target_group(cx, name.get_ref(), tg);
        target_groups.insert(name.get_ref().clone(), g);
    }
    let cache = raw.cache.as_ref().map(|c| cache(cx, c)).unwrap_or_default();
    let mut cache_behaviors = BTreeMap::new();
    for (name, b) in &raw.cache_behaviors {
        if !valid_name(name.get_ref()) {
            cx.err(name, format!("cache behavior name {:?} must be letters, digits, '-' or '_'", name.get_ref()));
        }
        cache_behaviors.insert(name.get_ref().clone(), behavior(cx, name.get_ref(), b));
    }
    let mut routes = Vec::new();
    for r in &raw.routes {
        if let Some(route) = route(cx, r, &target_groups, &cache_behaviors) {
            routes.push(route);
        }
    }
    if routes.is_empty() && !target_groups.is_empty() && cx.errors.is_empty() {
        cx.warnings.push("no [[routes]]: every request will get 404".into());
    }
    if let Some(edge_raw) = &raw.edge {
        if edge.listen.is_empty() && edge.tls.as_ref().is_none_or(|t| t.listen.is_empty()) {
            cx.err(edge_raw, "[edge] needs at least one address in listen (or in [edge.tls].listen)");
        }
    }
    let groups = crate::fleet::validate::groups(cx, &raw.groups, &target_groups);
    let watch = crate::watch::validate::watch(cx, raw.watch.as_ref());
    let notifiers = crate::watch::validate::notifiers(cx, &raw.notifiers);
    let has_cluster = raw.cluster.is_some();
    let alarms = crate::watch::validate::alarms(cx, &raw.alarms, &notifiers, has_cluster);
    let slos = crate::watch::validate::slos(cx, &raw.slos, &notifiers, &target_groups, has_cluster);
    let budget = raw.budget.as_ref().and_then(|b| crate::watch::validate::budget(cx, b, &notifiers, &groups));
    let images = raw.images.as_ref().and_then(|i| crate::images::validate::images(cx, i, &target_groups));
    let cluster = raw.cluster.as_ref().and_then(|c| crate::cluster::validate::cluster(cx, c));
    let fleet = crate::fleet::validate::settings(cx, raw.fleet.as_ref(), &source, cluster.as_ref());
    if let (Some(_), Some((name, _))) =
        (cache.parent, raw.target_groups.iter().find(|(n, _)| n.get_ref() == crate::SHIELD_GROUP))
    {
        cx.err(name, format!("target group name {:?} is reserved for cache.parent", crate::SHIELD_GROUP));
    }
    // Every node signs sticky cookies with the cluster's secret, so each honours the others'.
    let secret = cluster.as_ref().and_then(|c| c.secret.clone());
    for tg in target_groups.values_mut() {
        tg.stickiness.secret = secret.clone();
    }
    cx.errors.is_empty().then(|| Config {
        source,
        cluster,
        fleet,
        edge,
        admin,
        routes,
        target_groups,
        cache,
        cache_behaviors,
        groups,
        watch,
        alarms,
        slos,
        budget,
        notifiers,
        images,
        warnings: std::mem::take(&mut cx.warnings),
    })
}

fn edge(cx: &mut Ctx<'_>, raw: Option<&S<RawEdge>>) -> EdgeConfig {
    let Some(raw) = raw else {
        return EdgeConfig {
            listen: vec![],
            zone: None,
            tls: None,
            access_log: true,
            workers: 0,
            request_id_header: "x-request-id".into(),
            timeouts: Timeouts::default(),
            limits: Limits::default(),
            trusted_proxies: Vec::new(),
            proxy_protocol: false,
            escaped_slashes: EscapedSlashes::default(),
        };
    };
    let r = raw.get_ref();
    let listen = r.listen.iter().filter_map(|l| cx.socket_addr(l, "edge.listen")).collect();
    let d = Timeouts::default();
    let t = &r.timeouts;
    let timeouts = Timeouts {
        header_read: cx.duration(&t.header_read, "edge.timeouts.header_read", d.header_read),
        idle: cx.duration(&t.idle, "edge.timeouts.idle", d.idle),
        connect: cx.duration(&t.connect, "edge.timeouts.connect", d.connect),
        target_response: cx.duration(&t.target_response, "edge.timeouts.target_response", d.target_response),
        shutdown: cx.duration(&t.shutdown, "edge.timeouts.shutdown", d.shutdown),
    };
    for (v, key) in [
        (&t.header_read, "header_read"),
        (&t.idle, "idle"),
        (&t.connect, "connect"),
        (&t.target_response, "target_response"),
    ] {
        if let Some(v) = v {
            if units::parse_duration(v.get_ref()) == Ok(Duration::ZERO) {
                cx.err(v, format!("edge.timeouts.{key} must be greater than 0"));
            }
        }
    }
    let dl = Limits::default();
    let l = &r.limits;
    let limits = Limits {
        max_header_bytes: cx.size(&l.max_header_bytes, "edge.limits.max_header_bytes", dl.max_header_bytes as u64)
            as usize,
        max_headers: cx.int(&l.max_headers, "edge.limits.max_headers", 8..=10_000, dl.max_headers as i64) as usize,
        max_request_body: cx.size(&l.max_request_body, "edge.limits.max_request_body", dl.max_request_body),
        max_connections: cx.int(
            &l.max_connections,
            "edge.limits.max_connections",
            1..=1_000_000,
            dl.max_connections as i64,
        ) as usize,
        max_connections_per_ip: cx.int(
            &l.max_connections_per_ip,
            "edge.limits.max_connections_per_ip",
            0..=1_000_000,
            dl.max_connections_per_ip as i64,
        ) as usize,
        max_retry_body: cx.size(&l.max_retry_body, "edge.limits.max_retry_body", dl.max_retry_body as u64).min(16 << 20)
            as usize,
    };
    if limits.max_header_bytes < 1024 {
        if let Some(v) = &l.max_header_bytes {
            cx.err(v, "edge.limits.max_header_bytes must be at least 1KiB");
        }
    }
    let request_id_header = match &r.request_id_header {
        Some(h) if http_token(h.get_ref()) => h.get_ref().to_ascii_lowercase(),
        Some(h) => {
            cx.err(h, format!("edge.request_id_header: {:?} is not a valid header name", h.get_ref()));
            String::new()
        }
        None => "x-request-id".into(),
    };
    let trusted_proxies = r
        .trusted_proxies
        .iter()
        .filter_map(|c| match crate::Cidr::parse(c.get_ref()) {
            Ok(c) => Some(c),
            Err(e) => {
                cx.err(c, format!("edge.trusted_proxies: {e}"));
                None
            }
        })
        .collect();
    let escaped_slashes = match r.escaped_slashes.as_ref().map(|v| (v, v.get_ref().as_str())) {
        None | Some((_, "reject")) => EscapedSlashes::Reject,
        Some((_, "keep")) => EscapedSlashes::Keep,
        Some((_, "decode")) => EscapedSlashes::Decode,
        Some((v, other)) => {
            cx.err(v, format!("edge.escaped_slashes must be \"reject\", \"keep\" or \"decode\", got {other:?}"));
            EscapedSlashes::Reject
        }
    };
    EdgeConfig {
        listen,
        zone: r.zone.as_ref().map(|z| z.get_ref().clone()),
        tls: r.tls.as_ref().and_then(|t| tls(cx, t)),
        access_log: r.access_log.unwrap_or(true),
        workers: cx.int(&r.workers, "edge.workers", 0..=256, 0) as usize,
        request_id_header,
        timeouts,
        limits,
        trusted_proxies,
        proxy_protocol: r.proxy_protocol.unwrap_or(false),
        escaped_slashes,
    }
}

fn tls(cx: &mut Ctx<'_>, raw: &S<RawTls>) -> Option<TlsConfig> {
    let r = raw.get_ref();
    let listen: Vec<_> = r.listen.iter().filter_map(|l| cx.socket_addr(l, "edge.tls.listen")).collect();
    let acme: Vec<AcmeConfig> = match &r.acme {
        None => Vec::new(),
        Some(at) => match at.get_ref() {
            OneOrMany::One(a) => acme(cx, a, at).into_iter().collect(),
            OneOrMany::Many(list) => list.iter().filter_map(|a| acme(cx, a.get_ref(), a)).collect(),
        },
    };
    if r.certificates.is_empty() && r.acme.is_none() {
        cx.err(
            raw,
            "[edge.tls] needs at least one entry in certificates = [{ cert = ..., key = ... }] or an [edge.tls.acme] section",
        );
    }
    let certificates = r
        .certificates
        .iter()
        .map(|c| CertificateFiles {
            cert: cx.existing_file(&c.get_ref().cert, "edge.tls.certificates.cert"),
            key: cx.existing_file(&c.get_ref().key, "edge.tls.certificates.key"),
        })
        .collect();
    let min_version = match r.min_version.as_ref().map(|v| v.get_ref().as_str()) {
        None | Some("1.2") => TlsVersion::V1_2,
        Some("1.3") => TlsVersion::V1_3,
        Some(other) => {
            let msg = format!("edge.tls.min_version must be \"1.2\" or \"1.3\", got {other:?}");
            if let Some(v) = &r.min_version {
                cx.err(v, msg);
            }
            TlsVersion::V1_2
        }
    };
    let redirect_http = r.redirect_http.unwrap_or(false);
    if redirect_http && listen.is_empty() {
        cx.err(raw, "edge.tls.redirect_http needs a TLS listener in edge.tls.listen");
    }
    Some(TlsConfig { listen, certificates, min_version, redirect_http, acme })
}

/// A DNS name a public CA could issue for: letters, digits, hyphens, dots, an optional leading
/// `*.` (wildcards need DNS-01, which Flotilla does not do, so they are refused below).
fn dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// One `[edge.tls.acme]` entry; `raw` locates errors about the entry as a whole.
fn acme<T>(cx: &mut Ctx<'_>, r: &RawAcme, raw: &S<T>) -> Option<AcmeConfig> {
    let before = cx.errors.len();
    if r.domains.is_empty() {
        cx.err(raw, "edge.tls.acme.domains: name at least one domain, e.g. domains = [\"app.example.com\"]");
    }
    let mut domains = Vec::new();
    for d in &r.domains {
        let name = d.get_ref().trim().to_ascii_lowercase();
        if name.starts_with("*.") {
            cx.err(d, format!("edge.tls.acme.domains: {name:?} is a wildcard, which needs the DNS-01 challenge (not supported); name each host"));
        } else if !dns_name(&name) || !name.contains('.') {
            cx.err(d, format!("edge.tls.acme.domains: {name:?} is not a DNS name a CA can issue for"));
        } else if domains.contains(&name) {
            cx.err(d, format!("edge.tls.acme.domains: {name:?} is listed twice"));
        } else {
            domains.push(name);
        }
    }
    let email = r.email.as_ref().map(|e| (e, cx.expand(e, "edge.tls.acme.email")));
    if let Some((span, e)) = &email {
        if !e.contains('@') || e.contains(char::is_whitespace) {
            cx.err(span, format!("edge.tls.acme.email: {e:?} is not an email address"));
        }
    }
    let directory = match &r.directory {
        None => LETS_ENCRYPT.to_string(),
        Some(d) => {
            let v = cx.expand(d, "edge.tls.acme.directory");
            if !v.starts_with("https://") {
                cx.err(d, format!("edge.tls.acme.directory must be an https:// URL, got {v:?}"));
            }
            v
        }
    };
    let challenge = match r.challenge.as_ref().map(|c| c.get_ref().as_str()) {
        None | Some("http-01") => AcmeChallenge::Http01,
        Some("tls-alpn-01") => AcmeChallenge::TlsAlpn01,
        Some(other) => {
            if let Some(c) = &r.challenge {
                cx.err(c, format!("edge.tls.acme.challenge must be \"http-01\" or \"tls-alpn-01\", got {other:?}"));
            }
            AcmeChallenge::Http01
        }
    };
    let storage = match &r.storage {
        Some(s) => {
            let v = cx.expand(s, "edge.tls.acme.storage");
            cx.base_dir.join(v)
        }
        None => cx.base_dir.join("data/acme"),
    };
    let trust = r.trust.as_ref().map(|t| cx.existing_file(t, "edge.tls.acme.trust"));
    let renew_before =
        r.renew_before.as_ref().map(|_| cx.duration(&r.renew_before, "edge.tls.acme.renew_before", Duration::ZERO));
    if cx.errors.len() > before {
        return None;
    }
    Some(AcmeConfig { email: email.map(|(_, e)| e), domains, directory, challenge, storage, trust, renew_before })
}

fn admin(cx: &mut Ctx<'_>, raw: &S<RawAdmin>) -> Option<AdminConfig> {
    let r = raw.get_ref();
    let listen = match &r.listen {
        Some(l) => cx.socket_addr(l, "admin.listen")?,
        None => SocketAddr::from(([127, 0, 0, 1], 9090)),
    };
    let token = r.token.as_ref().map(|t| cx.expand(t, "admin.token")).filter(|t| !t.is_empty());
    if token.is_none() {
        cx.warnings.push("admin.token is empty: mutating admin API calls are disabled".into());
    }
    let read_token = r.read_token.as_ref().map(|t| cx.expand(t, "admin.read_token")).filter(|t| !t.is_empty());
    if let (Some(rt), true) = (&r.read_token, read_token.is_some() && read_token == token) {
        cx.err(rt, "admin.read_token must differ from admin.token (it may only read)");
    }
    // A read token is only useful when reads need one, so it turns the protection on.
    let protect_reads = r.protect_reads.as_ref().map_or(read_token.is_some(), |p| *p.get_ref());
    match (&r.protect_reads, &r.read_token) {
        (Some(p), _) if protect_reads && token.is_none() && read_token.is_none() => {
            cx.err(p, "admin.protect_reads needs admin.token or admin.read_token (else nothing could read)")
        }
        (Some(p), Some(_)) if !protect_reads && read_token.is_some() => {
            cx.err(p, "admin.protect_reads = false with admin.read_token set: the read token would do nothing")
        }
        _ => {}
    }
    let open_metrics = r.open_metrics.as_ref().is_some_and(|o| *o.get_ref());
    let mut allowed_hosts = Vec::new();
    for h in r.allowed_hosts.iter().flat_map(|l| l.get_ref()) {
        let name = h.get_ref().trim_end_matches('.').to_ascii_lowercase();
        let ok = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|l| {
                !l.is_empty() && !l.starts_with('-') && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !ok {
            cx.err(
                h,
                format!(
                    "admin.allowed_hosts: {:?} must be a host name, e.g. \"admin.internal\" (no scheme, port or '*')",
                    h.get_ref()
                ),
            );
        }
        allowed_hosts.push(name);
    }
    Some(AdminConfig { listen, token, read_token, protect_reads, open_metrics, allowed_hosts })
}

fn route(
    cx: &mut Ctx<'_>,
    raw: &S<RawRoute>,
    groups: &BTreeMap<String, TargetGroupConfig>,
    behaviors: &BTreeMap<String, CacheBehaviorConfig>,
) -> Option<RouteConfig> {
    let r = raw.get_ref();
    let host = match &r.host {
        None => HostPattern::Any,
        Some(h) => {
            let v = h.get_ref().to_ascii_lowercase();
            if v == "*" {
                HostPattern::Any
            } else if let Some(rest) = v.strip_prefix("*.") {
                if rest.is_empty() || rest.contains('*') {
                    cx.err(h, format!("routes.host {v:?}: only a leading \"*.\" wildcard is allowed"));
                }
                HostPattern::Suffix(format!(".{rest}"))
            } else if v.contains('*') || v.is_empty() {
                cx.err(h, format!("routes.host {v:?}: use an exact name, \"*.example.com\" or \"*\""));
                HostPattern::Any
            } else {
                HostPattern::Exact(v)
            }
        }
    };
    let path = match &r.path {
        None => PathPattern::Prefix("/".into()),
        Some(p) => {
            let v = p.get_ref();
            if !v.starts_with('/') {
                cx.err(p, format!("routes.path {v:?} must start with '/'"));
            } else if v.contains('%')
                || v.contains("//")
                || v.contains("/./")
                || v.contains("/../")
                || v.ends_with("/..")
            {
                // Requests are matched after their paths are made canonical; this pattern never would be.
                cx.err(
                    p,
                    format!(
                        "routes.path {v:?} is not canonical: write it without '%' escapes, '//', '.' or '..' segments"
                    ),
                );
            }
            match v.strip_suffix('*') {
                Some(prefix) if !prefix.contains('*') => PathPattern::Prefix(prefix.to_string()),
                _ if v.contains('*') => {
                    cx.err(p, format!("routes.path {v:?}: '*' is only allowed at the end (a prefix match)"));
                    PathPattern::Exact(v.clone())
                }
                _ => PathPattern::Exact(v.clone()),
            }
        }
    };
    let origin = match (&r.target_group, &r.origin) {
        (Some(tg), None) => {
            if !groups.contains_key(tg.get_ref()) {
                let known: Vec<_> = groups.keys().map(String::as_str).collect();
                cx.err(
                    tg,
                    format!("routes.target_group {:?} is not defined (known: {})", tg.get_ref(), known.join(", ")),
                );
            }
            RouteOrigin::TargetGroup(tg.get_ref().clone())
        }
        (None, Some(o)) => match o.get_ref().strip_prefix("files:") {
            Some(dir) if !dir.is_empty() => {
                let path = cx.base_dir.join(dir);
                if !path.is_dir() {
                    cx.err(o, format!("routes.origin: {} is not a directory", path.display()));
                }
                RouteOrigin::Files(path)
            }
            _ => {
                cx.err(o, format!("routes.origin {:?}: expected \"files:DIR\"", o.get_ref()));
                return None;
            }
        },
        (Some(tg), Some(_)) => {
            cx.err(tg, "a route has either target_group or origin, not both");
            return None;
        }
        (None, None) => {
            cx.err(raw, "route needs target_group = \"name\" (or origin = \"files:DIR\")");
            return None;
        }
    };
    let cache = r.cache.as_ref().map(|c| {
        if !behaviors.contains_key(c.get_ref()) {
            let known: Vec<_> = behaviors.keys().map(String::as_str).collect();
            cx.err(
                c,
                format!(
                    "routes.cache {:?} is not a [cache_behaviors] entry (known: {})",
                    c.get_ref(),
                    known.join(", ")
                ),
            );
        }
        c.get_ref().clone()
    });
    let rate_limit = r.rate_limit.as_ref().and_then(|l| rate_limit(cx, l));
    let headers = r.headers.as_ref().map(|h| header_policy(cx, h));
    Some(RouteConfig { host, path, origin, cache, headers, rate_limit })
}

fn header_policy(cx: &mut Ctx<'_>, raw: &S<RawHeaders>) -> HeaderPolicy {
    let r = raw.get_ref();
    let mut p = HeaderPolicy::default();
    let mut set = |cx: &mut Ctx<'_>, name: &str, v: &S<String>| {
        if !http_token(name) || v.get_ref().chars().any(|c| c.is_control()) {
            cx.err(v, format!("routes.headers: {name:?} = {:?} is not a valid header", v.get_ref()));
        }
        p.set.push((name.to_ascii_lowercase(), v.get_ref().clone()));
    };
    for (name, v) in [
        ("content-security-policy", &r.csp),
        ("x-frame-options", &r.frame_options),
        ("referrer-policy", &r.referrer_policy),
        ("permissions-policy", &r.permissions_policy),
    ] {
        if let Some(v) = v {
            set(cx, name, v);
        }
    }
    for (k, v) in &r.set {
        set(cx, k.get_ref(), v);
    }
    if r.content_type_options.as_ref().is_some_and(|v| *v.get_ref()) {
        p.set.push(("x-content-type-options".into(), "nosniff".into()));
    }
    for name in &r.remove {
        if !http_token(name.get_ref()) {
            cx.err(name, format!("routes.headers.remove: {:?} is not a header name", name.get_ref()));
        }
        p.remove.push(name.get_ref().to_ascii_lowercase());
    }
    if let Some(h) = &r.hsts {
        if !h.get_ref().contains("max-age=") {
            cx.err(h, "routes.headers.hsts needs max-age=…, e.g. \"max-age=31536000; includeSubDomains\"");
        }
        p.hsts = Some(h.get_ref().clone());
    }
    p
}

fn rate_limit(cx: &mut Ctx<'_>, raw: &S<RawRateLimit>) -> Option<RateLimitConfig> {
    let r = raw.get_ref();
    let Some(rate_raw) = &r.rate else {
        cx.err(raw, "routes.rate_limit needs a rate, e.g. 10 (per second) or \"600/min\"");
        return None;
    };
    let rate = match rate_raw.get_ref() {
        RateLit::Number(n) => Ok(*n),
        RateLit::Text(t) => parse_rate(t),
    };
    let rate = match rate {
        Ok(r) if r > 0.0 && r.is_finite() => Some(r),
        Ok(_) => {
            cx.err(rate_raw, "routes.rate_limit.rate must be more than 0");
            None
        }
        Err(e) => {
            cx.err(rate_raw, format!("routes.rate_limit.rate: {e}"));
            None
        }
    };
    let default_burst = rate.unwrap_or(1.0).ceil().max(1.0) as i64;
    let burst = cx.int(&r.burst, "routes.rate_limit.burst", 1..=1_000_000, default_burst) as u32;
    let key = match r.key.as_ref().map(|k| (k, k.get_ref().as_str())) {
        None | Some((_, "ip")) => RateKey::Ip,
        Some((k, v)) => match v.strip_prefix("header:") {
            Some(h) if http_token(h) => RateKey::Header(h.to_ascii_lowercase()),
            _ => {
                cx.err(k, format!("routes.rate_limit.key {v:?}: \"ip\" or \"header:NAME\""));
                RateKey::Ip
            }
        },
    };
    Some(RateLimitConfig { interval: std::time::Duration::from_secs_f64(1.0 / rate?), burst, key })
}

/// `"10/s"`, `"600/min"`, `"3600/h"` → per second.
fn parse_rate(t: &str) -> Result<f64, String> {
    let (n, unit) = t.split_once('/').ok_or_else(|| format!("{t:?}: write N/s, N/min or N/h"))?;
    let n: f64 = n.trim().parse().map_err(|_| format!("{t:?}: {n:?} is not a number"))?;
    let per = match unit.trim() {
        "s" | "sec" | "second" => 1.0,
        "m" | "min" | "minute" => 60.0,
        "h" | "hour" => 3600.0,
        u => return Err(format!("{t:?}: unknown unit {u:?} (s, min, h)")),
    };
    Ok(n / per)
}

fn cache(cx: &mut Ctx<'_>, raw: &S<RawCache>) -> CacheConfig {
    let r = raw.get_ref();
    let d = CacheConfig::default();
    let disk = r.disk.as_ref().and_then(|disk| {
        let dr = disk.get_ref();
        let Some(path) = &dr.path else {
            cx.err(disk, "cache.disk needs a path");
            return None;
        };
        let size = cx.size(&dr.size, "cache.disk.size", 10 << 30);
        if size < 1 << 20 {
            cx.err(disk, "cache.disk.size must be at least 1MiB");
        }
        Some(DiskCacheConfig { path: cx.base_dir.join(path.get_ref()), size })
    });
    let parent = r.parent.as_ref().and_then(|p| match p.get_ref().strip_prefix("http://") {
        Some(rest) => cx.socket_addr(&S::new(p.span(), rest.trim_end_matches('/').to_string()), "cache.parent"),
        None => {
            cx.err(
                p,
                format!("cache.parent: {:?} must be http://host:port (another Flotilla node's edge)", p.get_ref()),
            );
            None
        }
    });
    let c = CacheConfig {
        memory: cx.size(&r.memory, "cache.memory", d.memory),
        max_object: cx.size(&r.max_object, "cache.max_object", d.max_object),
        disk,
        parent,
        parent_timeout: cx.duration(&r.parent_timeout, "cache.parent_timeout", d.parent_timeout),
        fill_buffer: cx.size(&r.fill_buffer, "cache.fill_buffer", d.fill_buffer),
        fill_timeout: cx.duration(&r.fill_timeout, "cache.fill_timeout", d.fill_timeout),
    };
    if c.fill_timeout.is_zero() {
        if let Some(t) = &r.fill_timeout {
            cx.err(t, "cache.fill_timeout must be more than 0");
        }
    }
    if c.parent_timeout.is_zero() {
        if let Some(t) = &r.parent_timeout {
            cx.err(t, "cache.parent_timeout must be more than 0");
        }
    }
    if c.memory < 1 << 20 {
        if let Some(m) = &r.memory {
            cx.err(m, "cache.memory must be at least 1MiB");
        }
    }
    c
}

fn behavior(cx: &mut Ctx<'_>, name: &str, raw: &S<RawBehavior>) -> CacheBehaviorConfig {
    let r = raw.get_ref();
    let key = |k: &str| format!("cache_behaviors.{name}.{k}");
    let min_ttl = cx.duration(&r.min_ttl, &key("min_ttl"), Duration::ZERO);
    let default_ttl = cx.duration(&r.default_ttl, &key("default_ttl"), Duration::from_secs(86_400));
    let max_ttl = cx.duration(&r.max_ttl, &key("max_ttl"), Duration::from_secs(365 * 86_400));
    if !(min_ttl <= default_ttl && default_ttl <= max_ttl) {
        cx.err(
            raw,
            format!("cache_behaviors.{name}: need min_ttl <= default_ttl <= max_ttl (got {min_ttl:?}, {default_ttl:?}, {max_ttl:?})"),
        );
    }
    let compress = r.compress.as_ref().is_some_and(|c| *c.get_ref());
    let key_cfg = match &r.key {
        None => CacheKeyConfig { query: QueryKeyConfig::All, headers: vec![], cookies: vec![] },
        Some(k) => {
            let k = k.get_ref();
            let query = match k.query.as_ref().map(|q| (q, q.get_ref())) {
                None => QueryKeyConfig::All,
                Some((_, QueryLit::Word(w))) if w == "all" => QueryKeyConfig::All,
                Some((_, QueryLit::Word(w))) if w == "none" => QueryKeyConfig::None,
                Some((_, QueryLit::List(l))) => QueryKeyConfig::Only(l.clone()),
                Some((q, QueryLit::Word(w))) => {
                    cx.err(q, format!("{}: {w:?} must be \"all\", \"none\" or a list of names", key("key.query")));
                    QueryKeyConfig::All
                }
            };
            let headers = k
                .headers
                .iter()
                .map(|h| {
                    if !http_token(h.get_ref()) {
                        cx.err(h, format!("{}: {:?} is not a header name", key("key.headers"), h.get_ref()));
                    }
                    h.get_ref().to_ascii_lowercase()
                })
                .collect();
            CacheKeyConfig { query, headers, cookies: k.cookies.iter().map(|c| c.get_ref().clone()).collect() }
        }
    };
    CacheBehaviorConfig {
        name: name.to_string(),
        min_ttl,
        default_ttl,
        max_ttl,
        compress,
        key: key_cfg,
        stale_while_revalidate: cx.duration(&r.stale_while_revalidate, &key("stale_while_revalidate"), Duration::ZERO),
        stale_if_error: cx.duration(&r.stale_if_error, &key("stale_if_error"), Duration::ZERO),
        error_ttl: cx.duration(&r.error_ttl, &key("error_ttl"), Duration::from_secs(10)),
        other_cookies: match r.other_cookies.as_ref().map(|c| (c, c.get_ref().as_str())) {
            None | Some((_, "pass")) => OtherCookiesConfig::Pass,
            Some((_, "strip")) => OtherCookiesConfig::Strip,
            Some((c, other)) => {
                cx.err(c, format!("{}: {other:?} must be \"pass\" or \"strip\"", key("other_cookies")));
                OtherCookiesConfig::Pass
            }
        },
    }
}

fn target_group(cx: &mut Ctx<'_>, name: &str, raw: &S<RawTargetGroup>) -> TargetGroupConfig {
    let r = raw.get_ref();
    let key = |k: &str| format!("target_groups.{name}.{k}");
    let mut seen = HashSet::new();
    let mut targets = Vec::new();
    for t in &r.targets {
        let (addr, zone, weight) = match t.get_ref() {
            RawTarget::Addr(a) => (a, None, 1),
            RawTarget::Full { addr, zone, weight } => (addr, zone.clone(), weight.unwrap_or(1)),
        };
        let Ok(addr) = resolve(addr).map_err(|e| cx.err(t, format!("{}: {e}", key("targets")))) else {
            continue;
        };
        if !(1..=1000).contains(&weight) {
            cx.err(t, format!("{}: weight must be between 1 and 1000, got {weight}", key("targets")));
        }
        if !seen.insert(addr) {
            cx.err(t, format!("{}: {addr} is listed twice", key("targets")));
        }
        targets.push(TargetConfig { addr, zone, weight: weight.clamp(1, 1000) as u32 });
    }
    if targets.is_empty() {
        cx.warnings.push(format!("target group {name:?} has no targets yet; its routes answer 503"));
    }
    let algorithm = match r.algorithm.as_ref().map(|a| a.get_ref().as_str()) {
        None | Some("least_outstanding") => Algorithm::LeastOutstanding,
        Some("round_robin") => Algorithm::RoundRobin,
        Some("random") => Algorithm::Random,
        Some("hash_header") => Algorithm::HashHeader,
        Some("hash_ip") => Algorithm::HashIp,
        Some(other) => {
            let msg = format!(
                "{}: unknown algorithm {other:?} (round_robin, least_outstanding, random, hash_header, hash_ip)",
                key("algorithm")
            );
            if let Some(a) = &r.algorithm {
                cx.err(a, msg);
            }
            Algorithm::LeastOutstanding
        }
    };
    let hash_header = r.hash_header.as_ref().map(|h| {
        if !http_token(h.get_ref()) {
            cx.err(h, format!("{}: {:?} is not a valid header name", key("hash_header"), h.get_ref()));
        }
        h.get_ref().to_ascii_lowercase()
    });
    if algorithm == Algorithm::HashHeader && hash_header.is_none() {
        if let Some(a) = &r.algorithm {
            cx.err(a, format!("{}: algorithm = \"hash_header\" needs hash_header = \"Header-Name\"", key("algorithm")));
        }
    }
    let stickiness = match &r.stickiness {
        None => Stickiness {
            enabled: false,
            cookie: "flotilla_sticky".into(),
            duration: Duration::from_secs(86_400),
            secret: None,
        },
        Some(s) => {
            let s = s.get_ref();
            let cookie = match &s.cookie {
                Some(c) if http_token(c.get_ref()) => c.get_ref().clone(),
                Some(c) => {
                    cx.err(c, format!("{}: {:?} is not a valid cookie name", key("stickiness.cookie"), c.get_ref()));
                    String::new()
                }
                None => "flotilla_sticky".into(),
            };
            Stickiness {
                enabled: s.enabled.unwrap_or(true),
                cookie,
                duration: cx.duration(&s.duration, &key("stickiness.duration"), Duration::from_secs(86_400)),
                secret: None,
            }
        }
    };
    let health_check = health_check(cx, name, r.health_check.as_ref());
    let passive = match &r.passive {
        None => Passive { consecutive_5xx: 5, consecutive_connect_failures: 1 },
        Some(p) => {
            let p = p.get_ref();
            Passive {
                consecutive_5xx: cx.int(&p.consecutive_5xx, &key("passive.consecutive_5xx"), 0..=1000, 5) as u32,
                consecutive_connect_failures: cx.int(
                    &p.consecutive_connect_failures,
                    &key("passive.consecutive_connect_failures"),
                    0..=1000,
                    1,
                ) as u32,
            }
        }
    };
    TargetGroupConfig {
        name: name.to_string(),
        targets,
        algorithm,
        hash_header,
        deregistration_delay: cx.duration(
            &r.deregistration_delay,
            &key("deregistration_delay"),
            Duration::from_secs(60),
        ),
        slow_start: cx.duration(&r.slow_start, &key("slow_start"), Duration::ZERO),
        stickiness,
        retries: cx.int(&r.retries, &key("retries"), 0..=10, 2) as u32,
        health_check,
        passive,
    }
}

fn health_check(cx: &mut Ctx<'_>, name: &str, raw: Option<&S<RawHealthCheck>>) -> HealthCheck {
    let mut hc = HealthCheck {
        enabled: true,
        path: "/health".into(),
        interval: Duration::from_secs(30),
        timeout: Duration::from_secs(5),
        healthy_threshold: 2,
        unhealthy_threshold: 3,
        matcher: vec![(200, 399)],
    };
    let Some(raw) = raw else { return hc };
    let r = raw.get_ref();
    let key = |k: &str| format!("target_groups.{name}.health_check.{k}");
    hc.enabled = r.enabled.unwrap_or(true);
    if let Some(p) = &r.path {
        if !p.get_ref().starts_with('/') {
            cx.err(p, format!("{} must start with '/'", key("path")));
        }
        hc.path = p.get_ref().clone();
    }
    hc.interval = cx.duration(&r.interval, &key("interval"), hc.interval);
    hc.timeout = cx.duration(&r.timeout, &key("timeout"), hc.timeout);
    if hc.interval.is_zero() {
        cx.err_at(
            r.interval.as_ref().map_or(raw.span().start, |v| v.span().start),
            format!("{} must be greater than 0", key("interval")),
        );
    }
    if hc.timeout.is_zero() || hc.timeout > hc.interval {
        cx.err_at(
            r.timeout.as_ref().map_or(raw.span().start, |v| v.span().start),
            format!("{} must be greater than 0 and at most the interval ({:?})", key("timeout"), hc.interval),
        );
    }
    hc.healthy_threshold = cx.int(&r.healthy_threshold, &key("healthy_threshold"), 1..=10, 2) as u32;
    hc.unhealthy_threshold = cx.int(&r.unhealthy_threshold, &key("unhealthy_threshold"), 1..=10, 3) as u32;
    if let Some(m) = &r.matcher {
        match parse_matcher(m.get_ref()) {
            Ok(v) => hc.matcher = v,
            Err(e) => cx.err(m, format!("{}: {e}", key("matcher"))),
        }
    }
    hc
}

/// "200", "200-399", "200,204,300-399".
fn parse_matcher(s: &str) -> Result<Vec<(u16, u16)>, String> {
    let code = |t: &str| -> Result<u16, String> {
        t.trim()
            .parse::<u16>()
            .ok()
            .filter(|c| (100..=599).contains(c))
            .ok_or_else(|| format!("{t:?} is not an HTTP status code (100-599)"))
    };
    s.split(',')
        .map(|part| match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (code(a)?, code(b)?);
                if a > b {
                    return Err(format!("range {part:?} is backwards"));
                }
                Ok((a, b))
            }
            None => code(part).map(|c| (c, c)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::parse_matcher;

    #[test]
    fn matchers() {
        assert_eq!(parse_matcher("200-399"), Ok(vec![(200, 399)]));
        assert_eq!(parse_matcher("200,204"), Ok(vec![(200, 200), (204, 204)]));
        assert!(parse_matcher("399-200").is_err());
        assert!(parse_matcher("ok").is_err());
        assert!(parse_matcher("700").is_err());
    }
}

//! Who the client is, and what the origin is told about it.
//!
//! A client may send `X-Forwarded-For`, `Forwarded` or `X-Forwarded-Proto` itself. Believed, they
//! would let it choose the address that rate limits and `hash_ip` key on, and the scheme or host
//! an origin builds its links and redirects from — which the cache then serves to everyone,
//! though neither is in the key. So the edge believes forwarding headers only from peers in
//! `edge.trusted_proxies` (another tier of Flotilla, a balancer in front of it); from everyone
//! else they are removed and written afresh from what the edge itself saw.

use std::net::IpAddr;

use flotilla_config::Cidr;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Per-connection strings for the forwarding headers, built once when the connection opens
/// rather than formatted again for every request on it.
pub(crate) struct ClientAddr {
    /// The connection's client IP as X-Forwarded-For writes it.
    pub xff: HeaderValue,
    /// `for=…` as RFC 7239 writes it (IPv6 quoted and bracketed).
    pub forwarded_for: String,
    pub port: HeaderValue,
}

impl ClientAddr {
    pub(crate) fn new(client: IpAddr, local_port: u16) -> Self {
        let ip = client.to_string();
        let forwarded_for = match client {
            IpAddr::V4(_) => format!("for={ip}"),
            IpAddr::V6(_) => format!("for=\"[{ip}]\""),
        };
        let xff = HeaderValue::from_str(&ip).unwrap_or(HeaderValue::from_static("unknown"));
        Self { xff, forwarded_for, port: HeaderValue::from(local_port) }
    }
}

/// The client as one request sees it.
#[derive(Clone)]
pub(crate) struct Client {
    /// What access logs, rate limits and `hash_ip` use: the connection's address (or its PROXY
    /// header's), or behind a trusted proxy the nearest untrusted address it forwarded.
    pub ip: IpAddr,
    /// `ip` as text, `hash_ip`'s key.
    pub ip_text: HeaderValue,
    /// The scheme the client used: the connection's, or a trusted proxy's `X-Forwarded-Proto`.
    pub https: bool,
    /// The connection's peer is a trusted proxy: its forwarding headers are extended, not
    /// replaced.
    pub via_proxy: bool,
}

impl Client {
    /// A client connected directly (or through a PROXY header): nothing it sends is believed.
    pub(crate) fn direct(ip: IpAddr, ip_text: HeaderValue, tls: bool) -> Self {
        Self { ip, ip_text, https: tls, via_proxy: false }
    }

    /// A request whose connection comes from a trusted proxy: the client is the nearest address
    /// in `X-Forwarded-For` (or `Forwarded: for=`) that is not itself trusted, read from the
    /// right as nginx's `real_ip_recursive` does; the scheme is the proxy's `X-Forwarded-Proto`
    /// (or `Forwarded: proto=`). Anything unreadable falls back to the connection's own view.
    pub(crate) fn behind_proxy(headers: &HeaderMap, peer: IpAddr, tls: bool, trusted: &[Cidr]) -> Self {
        let chain = forwarded_chain(headers);
        let mut ip = peer;
        for hop in chain.iter().rev() {
            ip = *hop;
            if !flotilla_config::any_contains(trusted, *hop) {
                break;
            }
        }
        let https = forwarded_proto(headers).unwrap_or(tls);
        let ip_text = HeaderValue::from_str(&ip.to_string()).unwrap_or(HeaderValue::from_static("unknown"));
        Self { ip, ip_text, https, via_proxy: true }
    }

    pub(crate) fn scheme(&self) -> &'static str {
        if self.https {
            "https"
        } else {
            "http"
        }
    }
}

/// The addresses in X-Forwarded-For (or, without it, `Forwarded: for=`), left to right; empty if
/// any entry is unreadable (a garbled chain is not believed at all). At most 64 entries.
fn forwarded_chain(headers: &HeaderMap) -> Vec<IpAddr> {
    let mut out = Vec::new();
    let xff = headers.get_all(&XFF);
    let from_xff = xff.iter().next().is_some();
    let values: Vec<&HeaderValue> =
        if from_xff { xff.iter().collect() } else { headers.get_all(header::FORWARDED).iter().collect() };
    for v in values {
        let Ok(v) = v.to_str() else { return Vec::new() };
        for item in v.split(',') {
            let raw = if from_xff {
                item.trim()
            } else {
                match item.split(';').find_map(|p| {
                    let (k, v) = p.trim().split_once('=')?;
                    k.trim().eq_ignore_ascii_case("for").then_some(v.trim())
                }) {
                    Some(v) => v,
                    None => continue,
                }
            };
            let Some(ip) = parse_node(raw) else { return Vec::new() };
            if out.len() == 64 {
                return Vec::new();
            }
            out.push(ip);
        }
    }
    out
}

/// `1.2.3.4`, `1.2.3.4:5678`, `::1`, `[::1]`, `"[::1]:443"` → the address.
fn parse_node(s: &str) -> Option<IpAddr> {
    let s = s.trim().trim_matches('"');
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    s.rsplit_once(':').and_then(|(ip, port)| port.bytes().all(|b| b.is_ascii_digit()).then(|| ip.parse().ok())?)
}

/// The first `X-Forwarded-Proto` value (or `Forwarded: proto=`), if it is http or https.
fn forwarded_proto(headers: &HeaderMap) -> Option<bool> {
    let first = |v: &HeaderValue, f: &dyn Fn(&str) -> Option<String>| v.to_str().ok().and_then(f);
    let proto = match headers.get(&XFP) {
        Some(v) => first(v, &|s| s.split(',').next().map(|p| p.trim().to_ascii_lowercase())),
        None => headers.get(header::FORWARDED).and_then(|v| {
            first(v, &|s| {
                s.split(',').next()?.split(';').find_map(|p| {
                    let (k, v) = p.trim().split_once('=')?;
                    k.trim().eq_ignore_ascii_case("proto").then(|| v.trim().trim_matches('"').to_ascii_lowercase())
                })
            })
        }),
    }?;
    match proto.as_str() {
        "https" => Some(true),
        "http" => Some(false),
        _ => None,
    }
}

static XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
static XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");
static XFH: HeaderName = HeaderName::from_static("x-forwarded-host");
static XFPORT: HeaderName = HeaderName::from_static("x-forwarded-port");

/// Headers that tell an application about the client or the original request, which only a
/// trusted proxy may send: the `X-Forwarded-*` family, `Forwarded`, and the ones frameworks
/// honour for rewriting the URL or host (Symfony's `X-Original-URL`, IIS's `X-Rewrite-URL`, …).
fn forwarding_family(name: &HeaderName) -> bool {
    let n = name.as_str();
    n.starts_with("x-forwarded-")
        || *name == header::FORWARDED
        || matches!(
            n,
            "x-real-ip"
                | "x-client-ip"
                | "true-client-ip"
                | "x-cluster-client-ip"
                | "x-original-url"
                | "x-rewrite-url"
                | "x-original-host"
                | "x-host"
                | "x-url-scheme"
                | "front-end-https"
        )
}

/// Writes the forwarding headers for one request: X-Forwarded-For, -Proto, -Host, -Port and RFC
/// 7239 `Forwarded`. From a direct client whatever it sent of the family is removed first; from
/// a trusted proxy the chain is extended with the proxy's address and its -Proto, -Host and
/// -Port are kept.
pub(crate) fn add_forwarded(headers: &mut HeaderMap, conn: &ClientAddr, client: &Client, host: &str) {
    let proto = client.scheme();
    if !client.via_proxy {
        // One scan; most requests carry none, and only those that do pay for removals.
        let sent: Vec<HeaderName> = headers.keys().filter(|k| forwarding_family(k)).cloned().collect();
        for name in sent {
            headers.remove(&name);
        }
        headers.insert(&XFF, conn.xff.clone());
        headers.insert(&XFP, HeaderValue::from_static(proto));
        if let Ok(v) = HeaderValue::from_str(host) {
            headers.insert(&XFH, v);
        }
        headers.insert(&XFPORT, conn.port.clone());
        let mut fwd = Vec::with_capacity(conn.forwarded_for.len() + host.len() + 20);
        forwarded_element(&mut fwd, conn, host, proto);
        if let Ok(v) = HeaderValue::from_bytes(&fwd) {
            headers.insert(header::FORWARDED, v);
        }
        return;
    }
    let xff = match join_values(headers, &XFF) {
        Some(mut prev) => {
            prev.extend_from_slice(b", ");
            prev.extend_from_slice(conn.xff.as_bytes());
            HeaderValue::from_bytes(&prev).ok()
        }
        None => Some(conn.xff.clone()),
    };
    if let Some(v) = xff {
        headers.insert(&XFF, v);
    }
    // The scheme the edge believed is the one the origin is told (the proxy's, if it was valid).
    headers.insert(&XFP, HeaderValue::from_static(proto));
    if !headers.contains_key(&XFH) {
        if let Ok(v) = HeaderValue::from_str(host) {
            headers.insert(&XFH, v);
        }
    }
    if !headers.contains_key(&XFPORT) {
        headers.insert(&XFPORT, conn.port.clone());
    }
    let mut fwd = join_values(headers, &header::FORWARDED).unwrap_or_default();
    if !fwd.is_empty() {
        fwd.extend_from_slice(b", ");
    }
    forwarded_element(&mut fwd, conn, host, proto);
    if let Ok(v) = HeaderValue::from_bytes(&fwd) {
        headers.insert(header::FORWARDED, v);
    }
}

fn forwarded_element(out: &mut Vec<u8>, conn: &ClientAddr, host: &str, proto: &str) {
    out.extend_from_slice(conn.forwarded_for.as_bytes());
    out.extend_from_slice(b";host=\"");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\";proto=");
    out.extend_from_slice(proto.as_bytes());
}

/// All lines of a header joined with ", " (a list header may arrive split over several lines).
fn join_values(headers: &HeaderMap, name: &HeaderName) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for v in headers.get_all(name) {
        let b = v.as_bytes().trim_ascii();
        if b.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(b);
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn direct(ip: &str, tls: bool) -> Client {
        let ip: IpAddr = ip.parse().unwrap();
        Client::direct(ip, HeaderValue::from_str(&ip.to_string()).unwrap(), tls)
    }

    #[test]
    fn a_direct_clients_forwarding_headers_are_replaced() {
        let mut h = map(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
            ("forwarded", "for=1.2.3.4;host=evil.example;proto=https"),
            ("x-original-url", "/admin"),
            ("x-real-ip", "1.2.3.4"),
            ("x-app", "kept"),
        ]);
        let conn = ClientAddr::new("::1".parse().unwrap(), 443);
        add_forwarded(&mut h, &conn, &direct("::1", false), "a.example");
        assert_eq!(h["x-forwarded-for"], "::1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "a.example");
        assert_eq!(h["x-forwarded-port"], "443");
        assert_eq!(h["forwarded"], "for=\"[::1]\";host=\"a.example\";proto=http");
        assert!(!h.contains_key("x-original-url") && !h.contains_key("x-real-ip"));
        assert_eq!(h["x-app"], "kept");
    }

    #[test]
    fn a_trusted_proxys_chain_is_extended_and_its_client_believed() {
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap()];
        let h = map(&[("x-forwarded-for", "203.0.113.7, 10.1.1.1"), ("x-forwarded-proto", "https")]);
        let c = Client::behind_proxy(&h, "10.2.2.2".parse().unwrap(), false, &trusted);
        assert_eq!(c.ip, "203.0.113.7".parse::<IpAddr>().unwrap(), "nearest untrusted hop");
        assert!(c.https);
        let mut out = h.clone();
        let conn = ClientAddr::new("10.2.2.2".parse().unwrap(), 80);
        add_forwarded(&mut out, &conn, &c, "a.example");
        assert_eq!(out["x-forwarded-for"], "203.0.113.7, 10.1.1.1, 10.2.2.2");
        assert_eq!(out["x-forwarded-proto"], "https");
        // A spoofed entry left of the real client does not matter: reading stops at the first
        // untrusted address from the right.
        let h = map(&[("x-forwarded-for", "1.1.1.1, 203.0.113.7")]);
        let c = Client::behind_proxy(&h, "10.2.2.2".parse().unwrap(), true, &trusted);
        assert_eq!(c.ip, "203.0.113.7".parse::<IpAddr>().unwrap());
        assert!(c.https, "no X-Forwarded-Proto: the connection's scheme");
        // Garbage is not believed.
        let h = map(&[("x-forwarded-for", "203.0.113.7, bogus"), ("x-forwarded-proto", "gopher")]);
        let c = Client::behind_proxy(&h, "10.2.2.2".parse().unwrap(), false, &trusted);
        assert_eq!(c.ip, "10.2.2.2".parse::<IpAddr>().unwrap());
        assert!(!c.https);
        // RFC 7239 alone.
        let h = map(&[("forwarded", "for=\"[2001:db8::1]:4711\";proto=https, for=10.0.0.9")]);
        let c = Client::behind_proxy(&h, "10.2.2.2".parse().unwrap(), false, &trusted);
        assert_eq!(c.ip, "2001:db8::1".parse::<IpAddr>().unwrap());
        assert!(c.https);
    }
}

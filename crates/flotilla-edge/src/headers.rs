//! Header rules for a proxy: hop-by-hop removal (RFC 9110 §7.6.1), forwarding headers,
//! request ids, and the framing checks that keep request smuggling out.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers, including any named in `Connection`. When `keep_upgrade` is set
/// (a WebSocket handshake), `Connection: upgrade` and `Upgrade` survive so the target sees them.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One linear scan notes which hop-by-hop names are present (most messages carry none, and a
    // target's response typically only `Connection: keep-alive`); only those are removed.
    let mut present = 0u8;
    let mut upgrade = false;
    for k in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == k) {
            present |= 1 << i;
        } else if k == header::UPGRADE {
            upgrade = true;
        }
    }
    if present & 1 != 0 {
        // Names listed in `Connection` are hop-by-hop too; the usual tokens need no lookup.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !t.eq_ignore_ascii_case("keep-alive") && !t.eq_ignore_ascii_case("close"))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in named {
            if !(keep_upgrade && name == header::UPGRADE) {
                headers.remove(&name);
            }
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if upgrade {
        headers.remove(header::UPGRADE);
    }
}

/// True for a client's `Connection: upgrade` + `Upgrade: …` handshake request.
pub(crate) fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Sets X-Forwarded-For (appended), -Proto, -Host, -Port and RFC 7239 `Forwarded` (appended).
/// Per-connection strings for the forwarding headers, built once when the connection opens
/// rather than formatted again for every request on it.
pub(crate) struct ClientAddr {
    /// The client IP as X-Forwarded-For writes it.
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

/// Sets X-Forwarded-For (appended), -Proto, -Host, -Port and RFC 7239 `Forwarded` (appended).
pub(crate) fn add_forwarded(headers: &mut HeaderMap, client: &ClientAddr, proto: &'static str, host: &str) {
    static XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
    static XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");
    static XFH: HeaderName = HeaderName::from_static("x-forwarded-host");
    static XFPORT: HeaderName = HeaderName::from_static("x-forwarded-port");
    let xff = match headers.get(&XFF).map(HeaderValue::as_bytes) {
        Some(prev) if !prev.trim_ascii().is_empty() => {
            let mut v = Vec::with_capacity(prev.len() + 2 + client.xff.len());
            v.extend_from_slice(prev);
            v.extend_from_slice(b", ");
            v.extend_from_slice(client.xff.as_bytes());
            HeaderValue::from_bytes(&v).ok()
        }
        _ => Some(client.xff.clone()),
    };
    if let Some(v) = xff {
        headers.insert(&XFF, v);
    }
    headers.insert(&XFP, HeaderValue::from_static(proto));
    if let Ok(v) = HeaderValue::from_str(host) {
        headers.insert(&XFH, v);
    }
    headers.insert(&XFPORT, client.port.clone());
    let prev = headers.get(header::FORWARDED).map(HeaderValue::as_bytes);
    let mut fwd = Vec::with_capacity(prev.map_or(0, |p| p.len() + 2) + client.forwarded_for.len() + host.len() + 20);
    if let Some(p) = prev {
        fwd.extend_from_slice(p);
        fwd.extend_from_slice(b", ");
    }
    fwd.extend_from_slice(client.forwarded_for.as_bytes());
    fwd.extend_from_slice(b";host=\"");
    fwd.extend_from_slice(host.as_bytes());
    fwd.extend_from_slice(b"\";proto=");
    fwd.extend_from_slice(proto.as_bytes());
    if let Ok(v) = HeaderValue::from_bytes(&fwd) {
        headers.insert(header::FORWARDED, v);
    }
}

/// Refuses framing that different HTTP parsers could read differently (request smuggling):
/// Transfer-Encoding together with Content-Length, several Content-Length headers, and a
/// Transfer-Encoding other than plain `chunked`.
pub(crate) fn framing_is_ambiguous(headers: &HeaderMap) -> bool {
    let cl = headers.get_all(header::CONTENT_LENGTH).iter().count();
    let te: Vec<_> = headers.get_all(header::TRANSFER_ENCODING).iter().collect();
    if cl > 1 || (cl == 1 && !te.is_empty()) {
        return true;
    }
    match te.as_slice() {
        [] => false,
        [v] => !v.as_bytes().eq_ignore_ascii_case(b"chunked"),
        _ => true,
    }
}

/// A client-supplied request id is kept if it is short and printable, else a new one is made.
pub(crate) fn request_id(headers: &HeaderMap, name: &HeaderName) -> HeaderValue {
    if let Some(v) = headers.get(name) {
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic()) {
            return v.clone();
        }
    }
    // 32 lowercase hex digits, written directly (no formatter on the hot path).
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = fastrand::u128(..);
    let mut id = [0u8; 32];
    for slot in id.iter_mut().rev() {
        *slot = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
    HeaderValue::from_bytes(&id).unwrap_or(HeaderValue::from_static("0"))
}

/// The request's host, lower-cased, without port: from the absolute-form URI if present
/// (RFC 9112 §3.2.2: it wins over Host), else from the Host header.
pub(crate) fn host_of(uri: &http::Uri, headers: &HeaderMap) -> Option<String> {
    let raw = match uri.authority() {
        Some(a) => a.host(),
        None => host_without_port(headers.get(header::HOST)?.to_str().ok()?)?,
    };
    Some(raw.trim_end_matches('.').to_ascii_lowercase())
}

/// "example.com:8080" → "example.com", "[::1]:80" → "[::1]"; `None` for an invalid Host value.
fn host_without_port(h: &str) -> Option<&str> {
    let host = if h.starts_with('[') {
        let end = h.find(']')?;
        let rest = &h[end + 1..];
        if !(rest.is_empty() || rest.strip_prefix(':').is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()))) {
            return None;
        }
        &h[..=end]
    } else {
        match h.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
            Some(_) => return None,
            None => h,
        }
    };
    let ok = !host.is_empty()
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'[' | b']' | b':'));
    ok.then_some(host)
}

pub(crate) use flotilla_cache::key::cookie;

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

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = map(&[
            ("connection", "close, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "5"),
            ("te", "trailers"),
            ("x-app", "ok"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-app"));
    }

    #[test]
    fn upgrade_survives_for_websockets() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn forwarded_headers_append() {
        let mut h = map(&[("x-forwarded-for", "10.0.0.1")]);
        add_forwarded(&mut h, &ClientAddr::new("::1".parse().unwrap(), 443), "https", "a.example");
        assert_eq!(h["x-forwarded-port"], "443");
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, ::1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["forwarded"], "for=\"[::1]\";host=\"a.example\";proto=https");
    }

    #[test]
    fn ambiguous_framing_is_detected() {
        assert!(framing_is_ambiguous(&map(&[("content-length", "5"), ("transfer-encoding", "chunked")])));
        assert!(framing_is_ambiguous(&map(&[("content-length", "5"), ("content-length", "6")])));
        assert!(framing_is_ambiguous(&map(&[("transfer-encoding", "gzip, chunked")])));
        assert!(!framing_is_ambiguous(&map(&[("transfer-encoding", "chunked")])));
        assert!(!framing_is_ambiguous(&map(&[("content-length", "5")])));
    }

    #[test]
    fn hosts_and_cookies() {
        let h = map(&[("host", "WWW.Example.com:8080"), ("cookie", "a=1; flotilla_sticky=abc")]);
        assert_eq!(host_of(&"/x".parse().unwrap(), &h).as_deref(), Some("www.example.com"));
        assert_eq!(host_of(&"http://other.io/x".parse().unwrap(), &h).as_deref(), Some("other.io"));
        assert_eq!(cookie(&h, "flotilla_sticky"), Some("abc"));
        assert_eq!(host_without_port("[::1]:8080"), Some("[::1]"));
        assert_eq!(host_without_port("a.b"), Some("a.b"));
        assert_eq!(host_without_port("a.b:x"), None);
        assert_eq!(host_without_port("a b"), None);
        assert_eq!(cookie(&h, "b"), None);
    }

    #[test]
    fn request_ids() {
        let name = HeaderName::from_static("x-request-id");
        let kept = request_id(&map(&[("x-request-id", "abc-123")]), &name);
        assert_eq!(kept, "abc-123");
        let fresh = request_id(&map(&[("x-request-id", "has space")]), &name);
        assert_eq!(fresh.len(), 32);
    }
}

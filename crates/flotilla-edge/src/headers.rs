//! Header rules for a proxy: hop-by-hop removal (RFC 9110 §7.6.1), forwarding headers,
//! request ids, and the framing checks that keep request smuggling out.

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

/// Headers a `Connection` header may not nominate for removal. RFC 9110 §7.6.1 lets a sender
/// name extension headers that are meant for the next hop only; naming an end-to-end header
/// instead is an attack: `Connection: host` would send the origin a request without the `Host`
/// the route and the cache key used, and `Connection: authorization` or `x-forwarded-for` would
/// change what the origin does while the cache key stays the same. Such nominations are
/// ignored (the header is kept and treated normally); nominations of real extension headers
/// are honoured.
fn protected(name: &HeaderName) -> bool {
    static PROTECTED: [HeaderName; 26] = [
        header::HOST,
        header::CONTENT_LENGTH,
        header::CONTENT_TYPE,
        header::CONTENT_ENCODING,
        header::CONTENT_RANGE,
        header::FORWARDED,
        header::VIA,
        header::AUTHORIZATION,
        header::COOKIE,
        header::SET_COOKIE,
        header::CACHE_CONTROL,
        header::PRAGMA,
        header::EXPIRES,
        header::RANGE,
        header::IF_RANGE,
        header::IF_MATCH,
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_UNMODIFIED_SINCE,
        header::ACCEPT,
        header::ACCEPT_ENCODING,
        header::ACCEPT_LANGUAGE,
        header::ORIGIN,
        header::UPGRADE,
        header::VARY,
        header::LOCATION,
    ];
    let n = name.as_str();
    PROTECTED.contains(name)
        || n.starts_with("x-forwarded-")
        || n.starts_with("sec-websocket-")
        || matches!(
            n,
            "x-real-ip"
                | "x-request-id"
                | "x-flotilla-shield"
                | "cdn-cache-control"
                | "surrogate-control"
                | "age"
                | "etag"
                | "last-modified"
                | "date"
                | "content-location"
                | "content-disposition"
        )
}

/// Removes hop-by-hop headers, including extension headers named in `Connection` (never the
/// [`protected`] ones). When `keep_upgrade` is set (a WebSocket handshake), `Connection:
/// upgrade` and `Upgrade` survive so the target sees them.
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
        strip_nominated(headers);
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

/// Removes the extension headers `Connection` names, except [`protected`] ones; `Connection`
/// itself stays (hop-by-hop removal drops it later). Run before routing and keying, so the
/// route, the rate limiter, the cache key and the origin all see the same header set: a
/// header stripped only on the way out could make the origin's answer differ from what the
/// key (or a `Vary` value read from the client's request) says it is.
pub(crate) fn strip_nominated(headers: &mut HeaderMap) {
    let mut named: Vec<HeaderName> = Vec::new();
    for v in headers.get_all(header::CONNECTION).iter().filter_map(|v| v.to_str().ok()) {
        for t in v.split(',').map(str::trim) {
            // The usual tokens need no lookup.
            if t.is_empty()
                || t.eq_ignore_ascii_case("keep-alive")
                || t.eq_ignore_ascii_case("close")
                || t.eq_ignore_ascii_case("upgrade")
            {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(t.as_bytes()) {
                if !protected(&name) && !named.contains(&name) && named.len() < 32 {
                    named.push(name);
                }
            }
        }
    }
    for name in named {
        headers.remove(&name);
    }
}

/// The request-side header hygiene that runs before anything reads the headers, in one scan
/// of the names (most requests match nothing and pay for that one scan only):
/// - names with `_` go (nginx drops them by default: CGI-style servers — PHP, WSGI, Puma
///   before 6.4.3 — read `X_Forwarded_Host` as `X-Forwarded-Host`, past every rule that
///   matches the dashed name, and past the cache key);
/// - unless the peer is a trusted proxy, the shield's loop marker goes (a client could
///   otherwise make a child skip its parent);
/// - on a GET or HEAD, method overrides (`X-HTTP-Method-Override: DELETE`) go: a GET is routed,
///   limited and keyed as a GET, and must reach the origin as one;
/// - what `Connection` nominates goes ([`strip_nominated`]).
pub(crate) fn sanitize_request(headers: &mut HeaderMap, trusted: bool, get_or_head: bool) {
    let mut drop_any = false;
    let mut connection = false;
    for k in headers.keys() {
        if *k == header::CONNECTION {
            connection = true;
        } else if dropped(k, trusted, get_or_head) {
            drop_any = true;
        }
    }
    if drop_any {
        let names: Vec<HeaderName> = headers.keys().filter(|k| dropped(k, trusted, get_or_head)).cloned().collect();
        for name in names {
            headers.remove(&name);
        }
    }
    if connection {
        strip_nominated(headers);
    }
}

fn dropped(k: &HeaderName, trusted: bool, get_or_head: bool) -> bool {
    let n = k.as_str();
    n.contains('_')
        || (!trusted && n == "x-flotilla-shield")
        || (get_or_head && matches!(n, "x-http-method-override" | "x-http-method" | "x-method-override"))
}

/// Joins several `Cookie` fields into one, separated by "; " (RFC 9113 §8.2.3).
pub(crate) fn join_cookies(headers: &mut HeaderMap) {
    let mut joined = Vec::new();
    for v in headers.get_all(header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(v.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

/// True for a client's WebSocket handshake: `Connection: upgrade` + `Upgrade: websocket`. Only
/// WebSocket is tunnelled: an `h2c` (or any other) upgrade accepted by a target would open a
/// raw channel past routes, limits and header policies, so such requests are forwarded as plain
/// requests with `Upgrade` removed.
pub(crate) fn is_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().split('/').next().is_some_and(|p| p.trim().eq_ignore_ascii_case("websocket")))
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
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

/// The request's authority as the edge uses it everywhere: lower-case host without a trailing
/// dot, and the port only when it is not the scheme's default. Routing reads the host; the cache
/// key and the origin's `Host` read the whole authority, so a port a client adds (`site:8080`
/// on port 80) is part of the key rather than an unkeyed input the origin could echo into links.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Authority {
    text: String,
    host_len: usize,
}

impl Authority {
    pub(crate) fn host(&self) -> &str {
        &self.text[..self.host_len]
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.text
    }

    pub(crate) fn into_string(self) -> String {
        self.text
    }
}

/// From the absolute-form URI if present (RFC 9112 §3.2.2: it wins over Host), else from Host.
/// `Ok(None)`: no host at all; `Err`: an invalid one.
pub(crate) fn authority_of(uri: &http::Uri, headers: &HeaderMap, https: bool) -> Result<Option<Authority>, ()> {
    let (host, port) = match uri.authority() {
        Some(a) => (a.host(), a.port_u16()),
        None => match headers.get(header::HOST) {
            None => return Ok(None),
            Some(v) => split_host_port(v.to_str().map_err(|_| ())?).ok_or(())?,
        },
    };
    let host = host.trim_end_matches('.');
    if host.is_empty() {
        return Err(());
    }
    let default = if https { 443 } else { 80 };
    let mut text = host.to_ascii_lowercase();
    let host_len = text.len();
    if let Some(p) = port.filter(|&p| p != default) {
        text.push(':');
        push_u16(&mut text, p);
    }
    Ok(Some(Authority { text, host_len }))
}

/// Appends `n` in decimal (no formatter on the request path).
fn push_u16(out: &mut String, n: u16) {
    let mut digits = [0u8; 5];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend(digits[i..].iter().map(|&d| d as char));
}

/// "example.com:8080" → ("example.com", Some(8080)), "[::1]:80" → ("[::1]", Some(80)),
/// "a.b:" → ("a.b", None); `None` for an invalid Host value.
fn split_host_port(h: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if h.starts_with('[') {
        let end = h.find(']')?;
        (&h[..=end], h[end + 1..].strip_prefix(':').or(if h[end + 1..].is_empty() { Some("") } else { None })?)
    } else {
        match h.rsplit_once(':') {
            Some((host, port)) => (host, port),
            None => (h, ""),
        }
    };
    let port = match port {
        "" => None,
        p if p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => Some(p.parse::<u16>().ok()?),
        _ => return None,
    };
    let ok = !host.is_empty()
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'[' | b']' | b':'));
    ok.then_some((host, port))
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
    fn connection_cannot_nominate_end_to_end_headers() {
        let mut h = map(&[
            ("connection", "host, Authorization, x-forwarded-for, cookie, cache-control, x-hop"),
            ("host", "site"),
            ("authorization", "Bearer t"),
            ("x-forwarded-for", "10.0.0.1"),
            ("cookie", "a=1"),
            ("cache-control", "no-cache"),
            ("x-hop", "1"),
        ]);
        strip_nominated(&mut h);
        assert!(!h.contains_key("x-hop"), "a real extension header goes");
        for kept in ["host", "authorization", "x-forwarded-for", "cookie", "cache-control"] {
            assert!(h.contains_key(kept), "{kept} must survive a Connection nomination");
        }
        strip_hop_by_hop(&mut h, false);
        assert!(h.contains_key("host") && !h.contains_key("connection"));
    }

    #[test]
    fn underscored_names_and_a_clients_shield_marker_go() {
        let mut h = map(&[
            ("x_forwarded_host", "evil"),
            ("x-flotilla-shield", "1"),
            ("x-http-method-override", "DELETE"),
            ("connection", "x-hop"),
            ("x-hop", "1"),
            ("x-app", "1"),
        ]);
        sanitize_request(&mut h, true, false);
        assert!(!h.contains_key("x_forwarded_host") && !h.contains_key("x-hop"));
        assert!(h.contains_key("x-flotilla-shield") && h.contains_key("x-http-method-override"));
        sanitize_request(&mut h, false, true);
        assert!(!h.contains_key("x-flotilla-shield") && !h.contains_key("x-http-method-override"));
        assert!(h.contains_key("x-app") && h.contains_key("connection"), "{h:?}");
        let mut c = map(&[("cookie", "a=1"), ("cookie", "b=2")]);
        join_cookies(&mut c);
        assert_eq!(c.get_all("cookie").iter().count(), 1);
        assert_eq!(c["cookie"], "a=1; b=2");
    }

    #[test]
    fn only_websocket_is_an_upgrade() {
        assert!(is_upgrade(&map(&[("connection", "keep-alive, Upgrade"), ("upgrade", "WebSocket")])));
        assert!(!is_upgrade(&map(&[("connection", "Upgrade, HTTP2-Settings"), ("upgrade", "h2c")])));
        assert!(!is_upgrade(&map(&[("upgrade", "websocket")])), "no Connection: upgrade");
        let mut h = map(&[("connection", "Upgrade, HTTP2-Settings"), ("upgrade", "h2c"), ("http2-settings", "AAA")]);
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty(), "{h:?}");
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
        let auth = |uri: &str, h: &HeaderMap, https| authority_of(&uri.parse().unwrap(), h, https).unwrap().unwrap();
        let a = auth("/x", &h, false);
        assert_eq!((a.host(), a.as_str()), ("www.example.com", "www.example.com:8080"));
        let a = auth("http://Other.io./x", &h, false);
        assert_eq!((a.host(), a.as_str()), ("other.io", "other.io"));
        // The scheme's default port is not part of the authority; another port is.
        assert_eq!(auth("/", &map(&[("host", "site:80")]), false).as_str(), "site");
        assert_eq!(auth("/", &map(&[("host", "site:443")]), true).as_str(), "site");
        assert_eq!(auth("/", &map(&[("host", "site:80")]), true).as_str(), "site:80");
        assert_eq!(auth("/", &map(&[("host", "site.")]), false).as_str(), "site");
        assert_eq!(authority_of(&"/".parse().unwrap(), &HeaderMap::new(), false), Ok(None));
        assert_eq!(cookie(&h, "flotilla_sticky"), Some("abc"));
        assert_eq!(split_host_port("[::1]:8080"), Some(("[::1]", Some(8080))));
        assert_eq!(split_host_port("[::1]"), Some(("[::1]", None)));
        assert_eq!(split_host_port("a.b"), Some(("a.b", None)));
        assert_eq!(split_host_port("a.b:x"), None);
        assert_eq!(split_host_port("a.b:99999"), None);
        assert_eq!(split_host_port("a b"), None);
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

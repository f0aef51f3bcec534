//! Cache keys. The primary key is what a behaviour's `key` policy selects from the request
//! (host, path, query, chosen headers and cookies); the secondary key is the request's values of
//! the headers the stored response `Vary`s on (RFC 9111 §4.1), with Accept-Encoding normalized
//! to the encoding we would serve, so `gzip, deflate, br` and `br, gzip` share one entry.

use http::header::{HeaderMap, HeaderName};

/// Which query parameters take part in the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryKey {
    /// The whole query string, byte for byte.
    All,
    None,
    /// Only these parameters, sorted by name so their order in the URL does not matter.
    Only(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPolicy {
    pub query: QueryKey,
    pub headers: Vec<HeaderName>,
    pub cookies: Vec<String>,
}

impl Default for KeyPolicy {
    fn default() -> Self {
        Self { query: QueryKey::All, headers: Vec::new(), cookies: Vec::new() }
    }
}

/// The primary key. GET and HEAD share it (a HEAD is answered from the stored GET).
/// Parts are separated by a byte that cannot occur in any of them.
pub fn primary(policy: &KeyPolicy, host: &str, path: &str, query: Option<&str>, headers: &HeaderMap) -> String {
    let mut key = String::with_capacity(host.len() + path.len() + query.map_or(0, str::len) + 8);
    key.push_str(host);
    key.push('\u{1f}');
    key.push_str(path);
    if let Some(q) = query.and_then(|q| keyed_query(policy, q)) {
        key.push('?');
        key.push_str(&q);
    }
    for name in &policy.headers {
        key.push('\u{1f}');
        key.push_str(name.as_str());
        key.push(':');
        for v in headers.get_all(name) {
            key.push_str(&normalize_ws(&String::from_utf8_lossy(v.as_bytes())));
            key.push(',');
        }
    }
    if !policy.cookies.is_empty() {
        for name in &policy.cookies {
            key.push('\u{1f}');
            key.push_str("cookie:");
            key.push_str(name);
            key.push('=');
            if let Some(v) = cookie(headers, name) {
                key.push_str(v);
            }
        }
    }
    key
}

/// The part of a query string the key policy reads: all of it, none, or the listed parameters
/// sorted by name (so their order in the URL does not matter). `None` when nothing is keyed.
/// The edge forwards exactly this to the origin, so a parameter the key ignores can never
/// change an answer stored for everyone.
pub fn keyed_query<'a>(policy: &KeyPolicy, query: &'a str) -> Option<std::borrow::Cow<'a, str>> {
    if query.is_empty() {
        return None;
    }
    match &policy.query {
        QueryKey::All => Some(std::borrow::Cow::Borrowed(query)),
        QueryKey::None => None,
        QueryKey::Only(names) => {
            let mut kept: Vec<&str> = query
                .split('&')
                .filter(|pair| {
                    let name = pair.split_once('=').map_or(*pair, |(n, _)| n);
                    names.iter().any(|w| w == name)
                })
                .collect();
            kept.sort_unstable();
            (!kept.is_empty()).then(|| std::borrow::Cow::Owned(kept.join("&")))
        }
    }
}

/// The request's cookies as (name, value) pairs, over every `Cookie` field line: the one reading
/// of `Cookie` the key, the credential check and the sticky cookie share, so no cookie can be
/// one thing to the key and another to the credential check. Split on `;` as bytes, names and
/// values trimmed; a pair that is not UTF-8 reads as a name no key lists ("\u{fffd}").
pub fn cookie_pairs(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .filter_map(|pair| {
            let pair = std::str::from_utf8(pair).unwrap_or("\u{fffd}").trim();
            (!pair.is_empty()).then(|| pair.split_once('=').unwrap_or((pair, "")))
        })
        .map(|(k, v)| (k.trim(), v.trim()))
}

/// A cookie's value (its first occurrence; a request naming a keyed cookie twice is treated as
/// carrying credentials, see `credentials.rs`, so the origin's choice between them never
/// matters for a shared answer).
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    cookie_pairs(headers).find_map(|(k, v)| (k == name).then_some(v))
}

fn normalize_ws(s: &str) -> String {
    s.split_ascii_whitespace().collect::<Vec<_>>().join(" ")
}

/// The header names a response varies on, lower-case and sorted; `None` for `Vary: *`.
pub fn vary_names(response: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names = Vec::new();
    for v in response.get_all(http::header::VARY) {
        for token in String::from_utf8_lossy(v.as_bytes()).split(',') {
            let token = token.trim();
            if token == "*" {
                return None;
            }
            if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
    }
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    Some(names)
}

/// The secondary key: the request's values for `names`, normalized.
pub fn secondary(names: &[HeaderName], request: &HeaderMap) -> String {
    let mut key = String::new();
    for name in names {
        key.push_str(name.as_str());
        key.push(':');
        if *name == http::header::ACCEPT_ENCODING {
            key.push_str(preferred_encoding(request, &Encoding::ALL).as_str());
        } else {
            let values: Vec<String> =
                request.get_all(name).iter().map(|v| normalize_ws(&String::from_utf8_lossy(v.as_bytes()))).collect();
            key.push_str(&values.join(","));
        }
        key.push('\u{1f}');
    }
    key
}

/// Content codings the edge can serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    Brotli,
    Zstd,
    Gzip,
    Identity,
}

impl Encoding {
    /// In order of preference when the client rates several equally.
    pub const ALL: [Encoding; 4] = [Encoding::Brotli, Encoding::Zstd, Encoding::Gzip, Encoding::Identity];

    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Brotli => "br",
            Encoding::Zstd => "zstd",
            Encoding::Gzip => "gzip",
            Encoding::Identity => "identity",
        }
    }
}

/// The best of `available` for the request's Accept-Encoding (RFC 9110 §12.5.3): highest q,
/// ties by our order; `identity` is acceptable unless refused (`identity;q=0` or `*;q=0`).
pub fn preferred_encoding(request: &HeaderMap, available: &[Encoding]) -> Encoding {
    let q_of = |enc: Encoding| -> Option<f32> {
        let mut star = None;
        let mut exact = None;
        for v in request.get_all(http::header::ACCEPT_ENCODING) {
            for item in String::from_utf8_lossy(v.as_bytes()).split(',') {
                let mut parts = item.split(';');
                let coding = parts.next().unwrap_or("").trim().to_ascii_lowercase();
                let q = parts
                    .find_map(|p| p.trim().strip_prefix("q=").or_else(|| p.trim().strip_prefix("Q=")))
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .unwrap_or(1.0);
                if coding == enc.as_str() || (enc == Encoding::Gzip && coding == "x-gzip") {
                    exact = Some(q);
                } else if coding == "*" {
                    star = Some(q);
                }
            }
        }
        exact.or(star)
    };
    let mut best = Encoding::Identity;
    let mut best_q = 0.0f32;
    for &enc in available {
        let q = match (enc, q_of(enc)) {
            (_, Some(q)) => q,
            // Identity is implicitly acceptable; others only when listed (or no header: identity only).
            (Encoding::Identity, None) => 0.001,
            (_, None) => 0.0,
        };
        if q > best_q {
            best = enc;
            best_q = q;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        m
    }

    #[test]
    fn query_policies() {
        let none = HeaderMap::new();
        let all = KeyPolicy::default();
        assert_eq!(primary(&all, "a.com", "/x", Some("b=2&a=1"), &none), "a.com\u{1f}/x?b=2&a=1");
        assert_eq!(primary(&all, "a.com", "/x", None, &none), primary(&all, "a.com", "/x", Some(""), &none));
        let no_query = KeyPolicy { query: QueryKey::None, ..Default::default() };
        assert_eq!(primary(&no_query, "a.com", "/x", Some("utm=1"), &none), "a.com\u{1f}/x");
        let only = KeyPolicy { query: QueryKey::Only(vec!["v".into(), "w".into()]), ..Default::default() };
        assert_eq!(
            primary(&only, "a.com", "/x", Some("w=2&utm=9&v=1"), &none),
            primary(&only, "a.com", "/x", Some("v=1&w=2"), &none)
        );
    }

    #[test]
    fn selected_headers_and_cookies_split_the_key() {
        let p = KeyPolicy {
            headers: vec![HeaderName::from_static("x-tenant")],
            cookies: vec!["lang".into()],
            ..Default::default()
        };
        let a = primary(&p, "h", "/", None, &h(&[("x-tenant", "a"), ("cookie", "lang=de; sid=1")]));
        let b = primary(&p, "h", "/", None, &h(&[("x-tenant", "a"), ("cookie", "sid=2; lang=de")]));
        let c = primary(&p, "h", "/", None, &h(&[("x-tenant", "b"), ("cookie", "lang=de")]));
        assert_eq!(a, b, "unselected cookies do not matter");
        assert_ne!(a, c);
    }

    #[test]
    fn vary_and_accept_encoding_normalization() {
        assert_eq!(
            vary_names(&h(&[("vary", "Accept-Encoding, accept-language"), ("vary", "accept-encoding")])).unwrap().len(),
            2
        );
        assert_eq!(vary_names(&h(&[("vary", "accept, *")])), None);
        let names = vary_names(&h(&[("vary", "Accept-Encoding")])).unwrap();
        let k = |ae: &str| secondary(&names, &h(&[("accept-encoding", ae)]));
        assert_eq!(k("gzip, deflate, br"), k("br;q=1.0, gzip;q=0.8"));
        assert_ne!(k("gzip"), k("br"));
        assert_eq!(k("identity"), secondary(&names, &HeaderMap::new()));
    }

    #[test]
    fn preferred_encodings() {
        let pick = |ae: &str| preferred_encoding(&h(&[("accept-encoding", ae)]), &Encoding::ALL);
        assert_eq!(pick("gzip, deflate, br, zstd"), Encoding::Brotli);
        assert_eq!(pick("gzip;q=1, br;q=0.5"), Encoding::Gzip);
        assert_eq!(pick("x-gzip"), Encoding::Gzip);
        assert_eq!(pick("*"), Encoding::Brotli);
        assert_eq!(pick("br;q=0, gzip;q=0"), Encoding::Identity);
        assert_eq!(preferred_encoding(&HeaderMap::new(), &Encoding::ALL), Encoding::Identity);
        assert_eq!(
            preferred_encoding(&h(&[("accept-encoding", "br")]), &[Encoding::Gzip, Encoding::Identity]),
            Encoding::Identity
        );
    }
}

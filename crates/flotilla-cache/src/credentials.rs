//! Who a request speaks for. A shared cache must not hand one visitor's page to another, and
//! most apps personalise by cookie without saying so (Express, Flask, Django and Go send no
//! `Cache-Control` by default). The model, per behaviour (Varnish's default, with CloudFront's
//! as an option):
//!
//! - A request **carries credentials** when it has `Authorization`, or a cookie that is neither
//!   in the behaviour's key (`key.cookies`, which split the key, so their variation is safe) nor
//!   the edge's own sticky cookie (it picks a target, never a page).
//! - Such a request is answered from the cache only by an object the origin marked as shared
//!   (`public`, `s-maxage`, or a `CDN-Cache-Control` field); otherwise it goes to the origin on
//!   its own (no coalescing), and its response is stored only if the origin marked it so.
//! - With `other_cookies = "strip"` (CloudFront's model), cookies outside the key are removed
//!   before the origin: the request no longer speaks for anyone, so it is cached like any other.
//! - A response with `Set-Cookie` (other than the edge's own sticky cookie) is never stored.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::directives::CacheControl;

/// What a behaviour does with cookies that are not part of its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OtherCookies {
    /// Forward them; a request carrying one bypasses what the origin did not mark as shared.
    #[default]
    Pass,
    /// Remove them before the origin (and before deciding anything).
    Strip,
}

use crate::key::cookie_pairs as pairs;

fn kept(name: &str, keyed: &[String], own: Option<&str>) -> bool {
    keyed.iter().any(|k| k == name) || own == Some(name)
}

/// Does the request speak for someone: `Authorization`, a cookie outside `keyed` and `own`, or
/// a keyed cookie named twice (the key reads the first, an origin may read the last: Django and
/// Python's `SimpleCookie` do, so `lang=en; lang=evil` would store `evil` under `en`)?
pub fn carries_credentials(headers: &HeaderMap, keyed: &[String], own: Option<&str>) -> bool {
    headers.contains_key(header::AUTHORIZATION) || cookie_credentials(headers, keyed, own)
}

/// The cookie half of [`carries_credentials`]: a cookie outside `keyed` and `own`, or a kept one
/// named twice. One pass over the cookies; one lookup when there are none.
pub fn cookie_credentials(headers: &HeaderMap, keyed: &[String], own: Option<&str>) -> bool {
    if !headers.contains_key(header::COOKIE) {
        return false;
    }
    let mut seen: Vec<&str> = Vec::new();
    for (name, _) in pairs(headers) {
        if !kept(name, keyed, own) || seen.contains(&name) {
            return true;
        }
        seen.push(name);
    }
    false
}

/// A cookie outside `keyed` and `own`.
pub fn other_cookies(headers: &HeaderMap, keyed: &[String], own: Option<&str>) -> bool {
    pairs(headers).any(|(name, _)| !kept(name, keyed, own))
}

/// Removes every cookie outside `keyed` and `own` (`other_cookies = "strip"`); the rest are
/// joined on one `Cookie` line, or the field goes when none is left.
pub fn strip_other_cookies(headers: &mut HeaderMap, keyed: &[String], own: Option<&str>) {
    if !other_cookies(headers, keyed, own) {
        return;
    }
    let left: Vec<String> =
        pairs(headers).filter(|(name, _)| kept(name, keyed, own)).map(|(k, v)| format!("{k}={v}")).collect();
    headers.remove(header::COOKIE);
    if !left.is_empty() {
        if let Ok(v) = HeaderValue::from_bytes(left.join("; ").as_bytes()) {
            headers.insert(header::COOKIE, v);
        }
    }
}

/// Did the origin say any client may be given this response (and not only the one that asked)?
/// `public`, `s-maxage`, or a `CDN-Cache-Control` field, which only shared caches read.
pub fn shared_explicitly(cc: &CacheControl, headers: &HeaderMap) -> bool {
    static CDN: HeaderName = HeaderName::from_static("cdn-cache-control");
    cc.public || cc.s_maxage.is_some() || headers.contains_key(&CDN)
}

/// Takes the edge's own `Set-Cookie` lines (the sticky cookie named `own`) out of a response,
/// so the response can be judged (and stored) without them; the caller gives them back to the
/// client that caused them.
pub fn take_own_set_cookies(headers: &mut HeaderMap, own: &str) -> Vec<HeaderValue> {
    let is_own = |v: &HeaderValue| {
        v.as_bytes().split(|&b| b == b'=').next().is_some_and(|name| name.trim_ascii() == own.as_bytes())
    };
    if !headers.get_all(header::SET_COOKIE).iter().any(is_own) {
        return Vec::new();
    }
    let all: Vec<HeaderValue> = headers.get_all(header::SET_COOKIE).iter().cloned().collect();
    headers.remove(header::SET_COOKIE);
    let mut own_lines = Vec::new();
    for v in all {
        if is_own(&v) {
            own_lines.push(v);
        } else {
            headers.append(header::SET_COOKIE, v);
        }
    }
    own_lines
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
    fn credentials_are_authorization_and_cookies_outside_the_key() {
        let keyed = vec!["lang".to_string()];
        let own = Some("flotilla_sticky");
        let c = |pairs: &[(&str, &str)]| carries_credentials(&h(pairs), &keyed, own);
        assert!(!c(&[]));
        assert!(!c(&[("cookie", "lang=de; flotilla_sticky=t1")]), "keyed and the edge's own cookie");
        assert!(!c(&[("cookie", " ; ")]));
        assert!(c(&[("cookie", "lang=de; session=alice")]));
        assert!(c(&[("cookie", "lang=de"), ("cookie", "session=alice")]), "HTTP/2 splits cookies");
        assert!(c(&[("cookie", "flag")]), "a cookie without a value still counts");
        assert!(c(&[("authorization", "Bearer x")]));
        assert!(carries_credentials(&h(&[("cookie", "flotilla_sticky=t1")]), &[], None), "stickiness off");
        assert!(c(&[("cookie", "lang=en; lang=evil")]), "a keyed cookie twice");
        assert!(c(&[("cookie", "lang=en"), ("cookie", "lang=evil")]));
        // Whitespace around a name reads the same for the key and for this check.
        assert!(!c(&[("cookie", "lang =de")]));
        assert_eq!(crate::key::cookie(&h(&[("cookie", "lang =de")]), "lang"), Some("de"));
    }

    #[test]
    fn stripping_keeps_only_keyed_and_own_cookies() {
        let keyed = vec!["lang".to_string()];
        let mut m = h(&[("cookie", "session=alice; lang=de"), ("cookie", "flotilla_sticky=t1; _ga=1")]);
        strip_other_cookies(&mut m, &keyed, Some("flotilla_sticky"));
        assert_eq!(m.get_all(header::COOKIE).iter().collect::<Vec<_>>(), ["lang=de; flotilla_sticky=t1"]);
        let mut m = h(&[("cookie", "session=alice")]);
        strip_other_cookies(&mut m, &keyed, None);
        assert!(!m.contains_key(header::COOKIE));
        let mut m = h(&[("cookie", "lang=de"), ("authorization", "Basic x")]);
        strip_other_cookies(&mut m, &keyed, None);
        assert_eq!(m.get_all(header::COOKIE).iter().count(), 1, "nothing to strip: untouched");
        assert!(m.contains_key(header::AUTHORIZATION), "only cookies are stripped");
    }

    #[test]
    fn shared_and_own_set_cookies() {
        let cc = |s: &str| CacheControl::parse(s);
        assert!(shared_explicitly(&cc("public, max-age=60"), &HeaderMap::new()));
        assert!(shared_explicitly(&cc("s-maxage=60"), &HeaderMap::new()));
        assert!(shared_explicitly(&cc(""), &h(&[("cdn-cache-control", "max-age=60")])));
        assert!(!shared_explicitly(&cc("max-age=60"), &HeaderMap::new()));

        let mut m = h(&[("set-cookie", "flotilla_sticky=t1; Path=/"), ("set-cookie", "sid=abc")]);
        let own = take_own_set_cookies(&mut m, "flotilla_sticky");
        assert_eq!(own, ["flotilla_sticky=t1; Path=/"]);
        assert_eq!(m.get_all(header::SET_COOKIE).iter().collect::<Vec<_>>(), ["sid=abc"]);
        let mut m = h(&[("set-cookie", "flotilla_stickyX=1")]);
        assert!(take_own_set_cookies(&mut m, "flotilla_sticky").is_empty());
        assert!(m.contains_key(header::SET_COOKIE));
    }
}

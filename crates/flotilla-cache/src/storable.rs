//! May a shared cache store this response at all? RFC 9111 §3, §3.5 and §5.2, plus the
//! edge's own rule for errors: any client can provoke an error, so an error is stored only
//! when the origin gives it explicit freshness, or, for "not found" and "gone" (which depend on
//! the URL, not on how it was asked for), for the behaviour's short `error_ttl`.

use http::{HeaderMap, Method, StatusCode};

use crate::directives::CacheControl;
use crate::freshness::Behavior;

/// Why a response is not stored (also reported in `Cache-Status: …; detail=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    Method,
    Status,
    RequestNoStore,
    NoStore,
    Private,
    Authorization,
    /// Neither explicit freshness, a validator-free heuristic, nor a behaviour default allows it.
    NoFreshness,
    /// An error without explicit freshness from the origin whose status depends on the request
    /// (400, 403, 413, 414, 429, 431, 5xx, …): stored, it would answer every visitor with the
    /// error one client provoked.
    Error,
    /// A response that sets a cookie is meant for one client.
    SetCookie,
    /// The request carried cookies outside the key and the response did not say a shared cache
    /// may give it to others (`public`, `s-maxage`, `CDN-Cache-Control`): see
    /// [`crate::credentials`].
    Cookie,
    /// An error that may not replace the object stored for its key (see [`may_replace`]).
    KeptStored,
    VaryStar,
    PartialContent,
}

impl NotStored {
    pub fn as_str(self) -> &'static str {
        match self {
            NotStored::Method => "method",
            NotStored::Status => "status",
            NotStored::RequestNoStore => "request-no-store",
            NotStored::NoStore => "no-store",
            NotStored::Private => "private",
            NotStored::Authorization => "authorization",
            NotStored::NoFreshness => "no-freshness",
            NotStored::Error => "error",
            NotStored::SetCookie => "set-cookie",
            NotStored::Cookie => "cookie",
            NotStored::KeptStored => "kept-stored",
            NotStored::VaryStar => "vary-star",
            NotStored::PartialContent => "partial-content",
        }
    }
}

/// Status codes that are "heuristically cacheable" (RFC 9110 §15.1): storable and freshened by a
/// heuristic even without explicit freshness.
pub fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 200 | 203 | 204 | 206 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501)
}

/// Errors that say something about the URL itself ("not found", "gone"), not about the request
/// that asked: the only errors stored without explicit freshness, and then only for the
/// behaviour's `error_ttl` (negative caching). Everything else at 400 and above can be provoked
/// by a crafted request (an oversized or malformed header, a method override, a rate limit,
/// a crash) and is stored only when the origin gives it `max-age`/`s-maxage`/`Expires`.
pub fn negative(status: StatusCode) -> bool {
    matches!(status.as_u16(), 404 | 410)
}

/// `max-age`, `s-maxage` or `Expires`: the origin said how long this may be reused.
pub fn explicit_freshness(cc: &CacheControl, headers: &HeaderMap) -> bool {
    cc.max_age.is_some() || cc.s_maxage.is_some() || headers.contains_key(http::header::EXPIRES)
}

/// Status codes this cache understands well enough to store when the response says so.
fn understood(status: StatusCode) -> bool {
    heuristically_cacheable(status) || matches!(status.as_u16(), 302 | 303 | 307 | 400 | 403 | 500 | 502 | 503 | 504)
}

/// The inputs to the storage decision.
pub struct Exchange<'a> {
    pub method: &'a Method,
    pub request_headers: &'a HeaderMap,
    pub status: StatusCode,
    pub response_headers: &'a HeaderMap,
    /// Directives that apply to us (see [`CacheControl::for_cdn`]).
    pub response_cc: &'a CacheControl,
    /// The behaviour: a `default_ttl` > 0 lets 2xx/3xx responses without explicit freshness be
    /// stored (CloudFront's model), an `error_ttl` > 0 lets 404/410 be.
    pub behavior: Option<&'a Behavior>,
    /// The request carries cookies outside the key (other than the edge's own sticky cookie).
    pub cookies: bool,
}

/// `Ok(())` if a shared cache may store the response (RFC 9111 §3), else why not.
pub fn check(x: &Exchange<'_>) -> Result<(), NotStored> {
    if *x.method != Method::GET && *x.method != Method::HEAD {
        return Err(NotStored::Method);
    }
    if x.status == StatusCode::PARTIAL_CONTENT {
        // We store full objects and serve ranges from them; partial bodies are not combined.
        return Err(NotStored::PartialContent);
    }
    let cc = x.response_cc;
    // `must-understand` lets a cache store a status it understands despite `no-store`.
    let must_understand_ok = cc.must_understand && understood(x.status);
    if !understood(x.status) {
        return Err(NotStored::Status);
    }
    if cc.no_store && !must_understand_ok {
        return Err(NotStored::NoStore);
    }
    if CacheControl::from_headers(x.request_headers).no_store {
        return Err(NotStored::RequestNoStore);
    }
    if cc.private {
        return Err(NotStored::Private);
    }
    // §3.5: a shared cache stores responses to authenticated requests only when told it may.
    if x.request_headers.contains_key(http::header::AUTHORIZATION)
        && !(cc.public || cc.must_revalidate || cc.s_maxage.is_some())
    {
        return Err(NotStored::Authorization);
    }
    // The same rule for cookies the key does not capture: they may have personalised it.
    if x.cookies && !crate::credentials::shared_explicitly(cc, x.response_headers) {
        return Err(NotStored::Cookie);
    }
    if x.response_headers
        .get_all(http::header::VARY)
        .iter()
        .any(|v| v.as_bytes().split(|&b| b == b',').any(|t| t.trim_ascii() == b"*"))
    {
        return Err(NotStored::VaryStar);
    }
    if x.response_headers.contains_key(http::header::SET_COOKIE) {
        return Err(NotStored::SetCookie);
    }
    let explicit = explicit_freshness(cc, x.response_headers);
    if x.status.as_u16() >= 400 {
        // Not `public`, not a heuristic, not `default_ttl`: only the origin's word, or the short
        // negative-caching window for statuses about the URL.
        return match x.behavior {
            _ if explicit => Ok(()),
            Some(b) if negative(x.status) && !b.error_ttl.is_zero() => Ok(()),
            Some(_) => Err(NotStored::Error),
            None if heuristically_cacheable(x.status) && negative(x.status) => Ok(()),
            None => Err(NotStored::Error),
        };
    }
    let has_default_ttl = x.behavior.is_some_and(|b| !b.default_ttl.is_zero());
    if explicit || cc.public || heuristically_cacheable(x.status) || has_default_ttl {
        Ok(())
    } else {
        Err(NotStored::NoFreshness)
    }
}

/// May an error response replace what is stored for its key? A client can force a
/// revalidation (`Cache-Control: no-cache`, `max-age=0`) and craft the request so the origin
/// fails it; that error goes to that client, never over a good object:
/// - a stored object that is still fresh is never replaced by an error;
/// - a stale 2xx/3xx is replaced only by an error the origin gave explicit freshness (a 404
///   kept for `error_ttl` alone is not enough to drop a page the origin served before).
///
/// Non-errors always may (they are the origin's new answer).
pub fn may_replace(
    stored_status: StatusCode,
    stored: &crate::freshness::Freshness,
    status: StatusCode,
    explicit: bool,
    now: std::time::SystemTime,
) -> bool {
    if status.as_u16() < 400 {
        return true;
    }
    if stored.timing.current_age(now) < stored.lifetime {
        return false;
    }
    stored_status.as_u16() >= 400 || explicit
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    /// One decision: (method, request headers, status, response headers) → expected.
    fn check_case(
        method: Method,
        req: &[(&str, &str)],
        status: u16,
        resp: &[(&str, &str)],
        expected: Result<(), NotStored>,
    ) {
        check_with(None, method, req, status, resp, expected)
    }

    fn behaviour(default_ttl: u64, error_ttl: u64) -> Behavior {
        Behavior {
            min_ttl: std::time::Duration::from_secs(60),
            default_ttl: std::time::Duration::from_secs(default_ttl),
            max_ttl: std::time::Duration::from_secs(86_400),
            stale_while_revalidate: std::time::Duration::ZERO,
            stale_if_error: std::time::Duration::ZERO,
            error_ttl: std::time::Duration::from_secs(error_ttl),
        }
    }

    fn check_with(
        behavior: Option<Behavior>,
        method: Method,
        req: &[(&str, &str)],
        status: u16,
        resp: &[(&str, &str)],
        expected: Result<(), NotStored>,
    ) {
        let (rq, rs) = (headers(req), headers(resp));
        let cc = CacheControl::for_cdn(&rs);
        let x = Exchange {
            method: &method,
            request_headers: &rq,
            status: StatusCode::from_u16(status).unwrap(),
            response_headers: &rs,
            response_cc: &cc,
            behavior: behavior.as_ref(),
            cookies: req.iter().any(|(k, _)| *k == "cookie"),
        };
        assert_eq!(check(&x), expected, "{method} {req:?} → {status} {resp:?} ({behavior:?})");
    }

    #[test]
    fn errors_need_explicit_freshness_except_not_found_and_gone() {
        use NotStored as N;
        let b = || Some(behaviour(86_400, 10));
        // The crafted-request statuses: never stored on the behaviour's defaults.
        for status in [400, 403, 405, 414, 500, 501, 502, 503, 504] {
            check_with(b(), Method::GET, &[], status, &[], Err(N::Error));
            check_with(b(), Method::GET, &[], status, &[("cache-control", "public")], Err(N::Error));
            check_with(b(), Method::GET, &[], status, &[("cache-control", "max-age=30")], Ok(()));
            check_with(b(), Method::GET, &[], status, &[("cache-control", "s-maxage=30")], Ok(()));
        }
        // Statuses this cache does not understand are never stored, whatever they say.
        for status in [408, 413, 429, 431] {
            check_with(b(), Method::GET, &[], status, &[("cache-control", "max-age=30")], Err(N::Status));
        }
        check_with(b(), Method::GET, &[], 404, &[], Ok(()));
        check_with(b(), Method::GET, &[], 410, &[], Ok(()));
        check_with(Some(behaviour(86_400, 0)), Method::GET, &[], 404, &[], Err(N::Error));
        check_with(Some(behaviour(86_400, 0)), Method::GET, &[], 404, &[("expires", "0")], Ok(()));
        // Success statuses keep the behaviour's default_ttl (CloudFront's model).
        check_with(b(), Method::GET, &[], 302, &[], Ok(()));
        check_with(Some(behaviour(0, 10)), Method::GET, &[], 302, &[], Err(N::NoFreshness));
        check_with(b(), Method::GET, &[], 200, &[("set-cookie", "sid=1")], Err(N::SetCookie));
    }

    #[test]
    fn errors_never_replace_a_fresh_object_nor_a_stale_one_on_defaults() {
        use std::time::{Duration, SystemTime};
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let timing = crate::freshness::Timing::new(t0, t0, &HeaderMap::new());
        let stored = crate::freshness::Freshness::new(&CacheControl::default(), Duration::from_secs(60), timing, None);
        let s = |n: u16| StatusCode::from_u16(n).unwrap();
        let fresh = t0 + Duration::from_secs(30);
        let stale = t0 + Duration::from_secs(90);
        assert!(may_replace(s(200), &stored, s(200), false, fresh), "a new page replaces the old one");
        assert!(!may_replace(s(200), &stored, s(400), true, fresh), "fresh: never by an error");
        assert!(!may_replace(s(200), &stored, s(404), false, stale), "stale: not by a default-TTL 404");
        assert!(may_replace(s(200), &stored, s(404), true, stale), "stale: by an explicit one");
        assert!(may_replace(s(404), &stored, s(404), false, stale), "an error by an error");
    }

    #[test]
    fn storage_rules() {
        use NotStored as N;
        check_case(Method::GET, &[], 200, &[("cache-control", "max-age=60")], Ok(()));
        check_case(Method::GET, &[], 200, &[], Ok(())); // heuristically cacheable
        check_case(Method::POST, &[], 200, &[("cache-control", "max-age=60")], Err(N::Method));
        check_case(Method::GET, &[], 200, &[("cache-control", "no-store")], Err(N::NoStore));
        check_case(
            Method::GET,
            &[("cache-control", "no-store")],
            200,
            &[("cache-control", "max-age=60")],
            Err(N::RequestNoStore),
        );
        check_case(Method::GET, &[], 200, &[("cache-control", "private, max-age=60")], Err(N::Private));
        check_case(
            Method::GET,
            &[("authorization", "Bearer x")],
            200,
            &[("cache-control", "max-age=60")],
            Err(N::Authorization),
        );
        check_case(Method::GET, &[("authorization", "Bearer x")], 200, &[("cache-control", "s-maxage=60")], Ok(()));
        check_case(Method::GET, &[("authorization", "Bearer x")], 200, &[("cache-control", "public")], Ok(()));
        // Cookies outside the key (the test marks any Cookie so): only an explicitly shared answer.
        check_case(Method::GET, &[("cookie", "s=1")], 200, &[("cache-control", "max-age=60")], Err(N::Cookie));
        check_case(Method::GET, &[("cookie", "s=1")], 200, &[], Err(N::Cookie));
        check_case(Method::GET, &[("cookie", "s=1")], 200, &[("cache-control", "public")], Ok(()));
        check_case(Method::GET, &[("cookie", "s=1")], 200, &[("cache-control", "s-maxage=9")], Ok(()));
        check_case(Method::GET, &[("cookie", "s=1")], 200, &[("cdn-cache-control", "max-age=9")], Ok(()));
        check_case(Method::GET, &[], 200, &[("vary", "Accept, *")], Err(N::VaryStar));
        check_case(Method::GET, &[], 302, &[], Err(N::NoFreshness));
        check_case(Method::GET, &[], 302, &[("cache-control", "max-age=60")], Ok(()));
        check_case(Method::GET, &[], 299, &[("cache-control", "max-age=60")], Err(N::Status));
        check_case(Method::GET, &[], 206, &[("cache-control", "max-age=60")], Err(N::PartialContent));
        check_case(Method::GET, &[], 200, &[("cache-control", "no-store, must-understand")], Ok(()));
        // CDN-Cache-Control replaces Cache-Control for this cache.
        check_case(
            Method::GET,
            &[],
            200,
            &[("cache-control", "no-store"), ("cdn-cache-control", "max-age=60")],
            Ok(()),
        );
    }
}

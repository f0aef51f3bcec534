//! May a shared cache store this response at all? RFC 9111 §3, §3.5 and §5.2.

use http::{HeaderMap, Method, StatusCode};

use crate::directives::CacheControl;

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
    /// A behaviour's `default_ttl` > 0 lets responses without explicit freshness be stored
    /// (CloudFront's model): the operator has said how long such objects may live.
    pub has_default_ttl: bool,
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
    if x.response_headers
        .get_all(http::header::VARY)
        .iter()
        .any(|v| v.as_bytes().split(|&b| b == b',').any(|t| t.trim_ascii() == b"*"))
    {
        return Err(NotStored::VaryStar);
    }
    let explicit = cc.max_age.is_some()
        || cc.s_maxage.is_some()
        || x.response_headers.contains_key(http::header::EXPIRES)
        || cc.public;
    if explicit || heuristically_cacheable(x.status) || x.has_default_ttl {
        Ok(())
    } else {
        Err(NotStored::NoFreshness)
    }
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
        let (rq, rs) = (headers(req), headers(resp));
        let cc = CacheControl::for_cdn(&rs);
        let x = Exchange {
            method: &method,
            request_headers: &rq,
            status: StatusCode::from_u16(status).unwrap(),
            response_headers: &rs,
            response_cc: &cc,
            has_default_ttl: false,
        };
        assert_eq!(check(&x), expected, "{method} {req:?} → {status} {resp:?}");
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

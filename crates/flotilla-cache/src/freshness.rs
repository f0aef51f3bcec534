//! How long a stored response stays fresh, how old it is, and what a request may do with it:
//! RFC 9111 §4.2 (freshness, age), §4.3 (validation), §5.2 (request directives) and RFC 5861
//! (stale-while-revalidate, stale-if-error), with CloudFront-style behaviour TTL clamps.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode};

use crate::directives::CacheControl;
use crate::storable::{heuristically_cacheable, negative};

/// A cache behaviour's TTL policy (`[cache_behaviors.NAME]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Behavior {
    pub min_ttl: Duration,
    /// Used when the origin gives no explicit freshness.
    pub default_ttl: Duration,
    pub max_ttl: Duration,
    /// Defaults for responses that do not carry their own RFC 5861 directives.
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    /// How long a 404 or 410 without explicit freshness is stored (negative caching). Other
    /// errors are stored only with explicit freshness; `min_ttl` and `default_ttl` never apply
    /// to an error (see [`crate::storable::negative`]).
    pub error_ttl: Duration,
}

/// CloudFront's error-caching minimum TTL: long enough to absorb a burst of requests for a
/// missing object, short enough that a mistake is over in seconds.
pub const DEFAULT_ERROR_TTL: Duration = Duration::from_secs(10);

/// Heuristic freshness is capped, as most caches do: 10% of the age of Last-Modified, at most a day.
const HEURISTIC_CAP: Duration = Duration::from_secs(86_400);

/// The freshness lifetime of a response (§4.2.1), clamped by the behaviour if there is one.
pub fn lifetime(cc: &CacheControl, headers: &HeaderMap, status: StatusCode, behavior: Option<&Behavior>) -> Duration {
    let explicit = cc.s_maxage.or(cc.max_age).or_else(|| {
        let expires = headers.get(http::header::EXPIRES)?;
        // An invalid Expires (notably "0") means "already expired" (§5.3).
        let Some(expires) = http_date(expires) else { return Some(Duration::ZERO) };
        let date = headers.get(http::header::DATE).and_then(http_date).unwrap_or_else(SystemTime::now);
        Some(expires.duration_since(date).unwrap_or(Duration::ZERO))
    });
    if status.as_u16() >= 400 {
        // An error lives as long as the origin said (within max_ttl), or, for 404/410 only,
        // error_ttl: min_ttl and default_ttl never stretch it.
        return match (explicit, behavior) {
            (Some(t), Some(b)) => t.min(b.max_ttl),
            (Some(t), None) => t,
            (None, Some(b)) if negative(status) => b.error_ttl.min(b.max_ttl),
            (None, Some(_)) => Duration::ZERO,
            (None, None) => heuristic(cc, headers, status),
        };
    }
    match (explicit, behavior) {
        (Some(t), Some(b)) => t.clamp(b.min_ttl, b.max_ttl.max(b.min_ttl)),
        (Some(t), None) => t,
        (None, Some(b)) => b.default_ttl.clamp(b.min_ttl, b.max_ttl.max(b.min_ttl)),
        (None, None) => heuristic(cc, headers, status),
    }
}

/// §4.2.2: only for heuristically cacheable statuses (or `public`), from Last-Modified.
fn heuristic(cc: &CacheControl, headers: &HeaderMap, status: StatusCode) -> Duration {
    if !(heuristically_cacheable(status) || cc.public) {
        return Duration::ZERO;
    }
    let Some(lm) = headers.get(http::header::LAST_MODIFIED).and_then(http_date) else { return Duration::ZERO };
    let date = headers.get(http::header::DATE).and_then(http_date).unwrap_or_else(SystemTime::now);
    (date.duration_since(lm).unwrap_or(Duration::ZERO) / 10).min(HEURISTIC_CAP)
}

/// An `Age` that is not exactly one line of digits (a list, a second line, a sign, a fraction,
/// parameters) is read as "very old": the response is then revalidated before reuse, which is
/// always safe, where trusting a garbled age could serve something stale.
fn parse_age(headers: &HeaderMap) -> Duration {
    const VERY_OLD: Duration = Duration::from_secs(1 << 31);
    let mut values = headers.get_all(http::header::AGE).iter();
    let (Some(v), None) = (values.next(), values.next()) else {
        return if headers.contains_key(http::header::AGE) { VERY_OLD } else { Duration::ZERO };
    };
    let b = v.as_bytes().trim_ascii();
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return VERY_OLD;
    }
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(VERY_OLD, |n| Duration::from_secs(n.min(1 << 31)))
}

pub fn http_date(v: &http::HeaderValue) -> Option<SystemTime> {
    httpdate::parse_http_date(v.to_str().ok()?.trim()).ok()
}

/// What the cache remembers about when and how a response arrived, for age calculation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timing {
    pub request_time: SystemTime,
    pub response_time: SystemTime,
    /// The response's Date header, if valid.
    pub date: Option<SystemTime>,
    /// The response's Age header, if valid.
    pub age: Duration,
}

impl Timing {
    pub fn new(request_time: SystemTime, response_time: SystemTime, headers: &HeaderMap) -> Self {
        let date = headers.get(http::header::DATE).and_then(http_date);
        Self { request_time, response_time, date, age: parse_age(headers) }
    }

    /// current_age (§4.2.3).
    pub fn current_age(&self, now: SystemTime) -> Duration {
        let apparent = self.date.and_then(|d| self.response_time.duration_since(d).ok()).unwrap_or(Duration::ZERO);
        let delay = self.response_time.duration_since(self.request_time).unwrap_or(Duration::ZERO);
        let corrected_initial = apparent.max(self.age + delay);
        let resident = now.duration_since(self.response_time).unwrap_or(Duration::ZERO);
        corrected_initial + resident
    }
}

/// What to do with a stored response for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Serve it; `ttl` is the freshness left (for `Cache-Status: hit; ttl=`).
    Fresh { ttl: Duration },
    /// Serve it stale now and refresh it in the background (stale-while-revalidate).
    StaleWhileRevalidate,
    /// Serve it stale because the client allows it (`max-stale`).
    StaleAllowed,
    /// Ask the origin (conditionally, if the response has validators) before serving.
    Revalidate,
}

/// The stored response's directives and lifetime, captured when it was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Freshness {
    pub lifetime: Duration,
    pub timing: Timing,
    pub no_cache: bool,
    /// must-revalidate, proxy-revalidate or s-maxage: never serve stale without asking.
    pub must_revalidate: bool,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
}

impl Freshness {
    pub fn new(cc: &CacheControl, lifetime: Duration, timing: Timing, behavior: Option<&Behavior>) -> Self {
        Self {
            lifetime,
            timing,
            no_cache: cc.no_cache,
            must_revalidate: cc.must_revalidate || cc.proxy_revalidate || cc.s_maxage.is_some(),
            stale_while_revalidate: cc
                .stale_while_revalidate
                .or(behavior.map(|b| b.stale_while_revalidate))
                .unwrap_or(Duration::ZERO),
            stale_if_error: cc.stale_if_error.or(behavior.map(|b| b.stale_if_error)).unwrap_or(Duration::ZERO),
        }
    }

    /// The decision for a request with directives `req` (and `Pragma: no-cache` folded into
    /// `req.no_cache` by the caller when the request has no Cache-Control).
    pub fn decide(&self, req: &CacheControl, now: SystemTime) -> Decision {
        if self.no_cache || req.no_cache {
            return Decision::Revalidate;
        }
        let age = self.timing.current_age(now);
        let fresh_for_request =
            req.max_age.is_none_or(|m| age <= m) && age + req.min_fresh.unwrap_or(Duration::ZERO) < self.lifetime;
        if fresh_for_request {
            return Decision::Fresh { ttl: self.lifetime.saturating_sub(age) };
        }
        if self.must_revalidate {
            return Decision::Revalidate;
        }
        let staleness = age.saturating_sub(self.lifetime);
        if let Some(limit) = req.max_stale {
            if limit.is_none_or(|l| staleness <= l) {
                return Decision::StaleAllowed;
            }
        }
        // A request max-age of 0 (a hard reload) asks for a fresh answer: no stale serving.
        if req.max_age.is_none() && staleness < self.stale_while_revalidate {
            return Decision::StaleWhileRevalidate;
        }
        Decision::Revalidate
    }

    /// May this stale response stand in for an origin that failed (5xx or unreachable)?
    pub fn usable_on_error(&self, now: SystemTime) -> bool {
        if self.must_revalidate {
            return false;
        }
        let staleness = self.timing.current_age(now).saturating_sub(self.lifetime);
        staleness < self.stale_if_error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        m
    }

    fn date(secs: u64) -> String {
        httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
    }

    fn life(pairs: &[(&str, &str)], status: u16, b: Option<&Behavior>) -> u64 {
        let headers = h(pairs);
        lifetime(&CacheControl::for_cdn(&headers), &headers, StatusCode::from_u16(status).unwrap(), b).as_secs()
    }

    #[test]
    fn lifetime_precedence() {
        let d = date(1_000_000);
        assert_eq!(life(&[("cache-control", "max-age=60, s-maxage=120")], 200, None), 120);
        assert_eq!(
            life(&[("cache-control", "max-age=60"), ("expires", &date(1_000_500)), ("date", &d)], 200, None),
            60
        );
        assert_eq!(life(&[("expires", &date(1_000_500)), ("date", &d)], 200, None), 500);
        assert_eq!(life(&[("expires", "0"), ("date", &d)], 200, None), 0);
        assert_eq!(life(&[("expires", &date(999_000)), ("date", &d)], 200, None), 0);
        // Heuristic: 10% of (Date - Last-Modified), only for heuristically cacheable statuses.
        assert_eq!(life(&[("last-modified", &date(990_000)), ("date", &d)], 200, None), 1_000);
        assert_eq!(life(&[("last-modified", &date(990_000)), ("date", &d)], 302, None), 0);
        assert_eq!(life(&[("last-modified", &date(0)), ("date", &d)], 200, None), 86_400);
    }

    #[test]
    fn behaviours_clamp_like_cloudfront() {
        let b = Behavior {
            min_ttl: Duration::from_secs(10),
            default_ttl: Duration::from_secs(3600),
            max_ttl: Duration::from_secs(600),
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            error_ttl: Duration::from_secs(5),
        };
        assert_eq!(life(&[("cache-control", "max-age=1")], 200, Some(&b)), 10);
        assert_eq!(life(&[("cache-control", "max-age=100000")], 200, Some(&b)), 600);
        assert_eq!(life(&[], 200, Some(&b)), 600, "default_ttl is clamped to max_ttl too");
        assert_eq!(life(&[("cache-control", "max-age=300")], 200, Some(&b)), 300);
        // Errors: neither min_ttl nor default_ttl stretches them; 404/410 get error_ttl.
        assert_eq!(life(&[("cache-control", "max-age=1")], 500, Some(&b)), 1);
        assert_eq!(life(&[("cache-control", "max-age=100000")], 400, Some(&b)), 600);
        assert_eq!(life(&[], 400, Some(&b)), 0);
        assert_eq!(life(&[], 503, Some(&b)), 0);
        assert_eq!(life(&[], 404, Some(&b)), 5);
        assert_eq!(life(&[], 410, Some(&b)), 5);
    }

    #[test]
    fn malformed_age_means_very_old() {
        let t = SystemTime::UNIX_EPOCH;
        let age = |pairs: &[(&str, &str)]| Timing::new(t, t, &h(pairs)).age.as_secs();
        assert_eq!(age(&[("age", "30")]), 30);
        assert_eq!(age(&[]), 0);
        for bad in ["abc", "-1", "1.0", "0, 0", "7200;x=1", ""] {
            assert!(age(&[("age", bad)]) > 1 << 30, "{bad:?}");
        }
        assert!(age(&[("age", "0"), ("age", "0")]) > 1 << 30);
    }

    #[test]
    fn age_follows_rfc_9111_4_2_3() {
        let t = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        // Sent at 100, answered at 102 with Date 90 and Age 5; now 200.
        let timing = Timing::new(t(100), t(102), &h(&[("date", &date(90)), ("age", "5")]));
        // apparent = 102-90 = 12; corrected = 5 + 2 = 7; initial = 12; resident = 98.
        assert_eq!(timing.current_age(t(200)), Duration::from_secs(110));
        let no_date = Timing::new(t(100), t(100), &h(&[]));
        assert_eq!(no_date.current_age(t(130)), Duration::from_secs(30));
    }

    fn fresh(cc: &str, life: u64, stored_at: u64, b: Option<&Behavior>) -> Freshness {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(stored_at);
        Freshness::new(&CacheControl::parse(cc), Duration::from_secs(life), Timing::new(t, t, &h(&[])), b)
    }

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s)
    }

    #[test]
    fn decisions() {
        use Decision::*;
        let none = CacheControl::default();
        let f = fresh("max-age=60", 60, 1000, None);
        assert_eq!(f.decide(&none, at(1030)), Fresh { ttl: Duration::from_secs(30) });
        assert_eq!(f.decide(&none, at(1061)), Revalidate);
        assert_eq!(f.decide(&CacheControl::parse("no-cache"), at(1001)), Revalidate);
        assert_eq!(f.decide(&CacheControl::parse("max-age=10"), at(1030)), Revalidate);
        assert_eq!(f.decide(&CacheControl::parse("min-fresh=40"), at(1030)), Revalidate);
        assert_eq!(f.decide(&CacheControl::parse("max-stale=10"), at(1065)), StaleAllowed);
        assert_eq!(f.decide(&CacheControl::parse("max-stale"), at(9999)), StaleAllowed);
        assert_eq!(fresh("max-age=60, no-cache", 60, 1000, None).decide(&none, at(1001)), Revalidate);

        let swr = fresh("max-age=60, stale-while-revalidate=30", 60, 1000, None);
        assert_eq!(swr.decide(&none, at(1080)), StaleWhileRevalidate);
        assert_eq!(swr.decide(&none, at(1100)), Revalidate);
        assert_eq!(swr.decide(&CacheControl::parse("max-age=0"), at(1080)), Revalidate);

        let strict = fresh("max-age=60, must-revalidate, stale-while-revalidate=30", 60, 1000, None);
        assert_eq!(strict.decide(&CacheControl::parse("max-stale"), at(1070)), Revalidate);
        assert!(!strict.usable_on_error(at(1070)));
    }

    #[test]
    fn stale_if_error_from_the_response_or_the_behaviour() {
        let sie = fresh("max-age=60, stale-if-error=100", 60, 1000, None);
        assert!(sie.usable_on_error(at(1150)));
        assert!(!sie.usable_on_error(at(1170)));
        let b = Behavior {
            min_ttl: Duration::ZERO,
            default_ttl: Duration::from_secs(60),
            max_ttl: Duration::from_secs(600),
            stale_while_revalidate: Duration::from_secs(30),
            stale_if_error: Duration::from_secs(86_400),
            error_ttl: DEFAULT_ERROR_TTL,
        };
        let from_behaviour = fresh("max-age=60", 60, 1000, Some(&b));
        assert!(from_behaviour.usable_on_error(at(50_000)));
        assert_eq!(from_behaviour.decide(&CacheControl::default(), at(1070)), Decision::StaleWhileRevalidate);
    }
}

//! Conditional requests (RFC 9110 §13) against a representation's validators, one set of rules
//! for every place the edge answers them itself: a stored entry (`cached`) and a file
//! (`files:` origins). Two copies once disagreed on `If-Range` (one took a weak ETag).

use std::time::SystemTime;

use http::header::{self, HeaderMap};

use crate::range::{self, Ranges};

/// A representation's validators, as its response headers carry them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Validators<'a> {
    /// The `ETag` value, quotes included (`"abc"` or `W/"abc"`).
    pub etag: Option<&'a str>,
    /// The `Last-Modified` value, as sent.
    pub last_modified: Option<&'a str>,
}

impl<'a> Validators<'a> {
    /// From response headers.
    pub fn of(headers: &'a HeaderMap) -> Self {
        Self {
            etag: headers.get(header::ETAG).and_then(|v| v.to_str().ok()),
            last_modified: headers.get(header::LAST_MODIFIED).and_then(|v| v.to_str().ok()),
        }
    }
}

/// Should a GET or HEAD be answered 304? §13.2.2's order: `If-None-Match` (weak comparison; `*`
/// matches any current representation) and, only without it, `If-Modified-Since` (a valid
/// HTTP-date not before `Last-Modified`).
pub fn not_modified(request: &HeaderMap, v: &Validators<'_>) -> bool {
    if request.contains_key(header::IF_NONE_MATCH) {
        let Some(etag) = v.etag else {
            // `*` matches any current representation, validator or not.
            return list(request, header::IF_NONE_MATCH).any(|t| t == "*");
        };
        return list(request, header::IF_NONE_MATCH).any(|t| t == "*" || weak(t) == weak(etag));
    }
    let since = request.get(header::IF_MODIFIED_SINCE).and_then(|v| date(v.to_str().ok()?));
    match (since, v.last_modified.and_then(date)) {
        (Some(since), Some(modified)) => modified <= since,
        _ => false,
    }
}

/// Does `If-Range` allow a partial answer (§13.1.5)? Absent: yes. An entity-tag: only a strong
/// match with a strong ETag. A date: only one exactly equal to `Last-Modified`.
pub fn if_range_holds(request: &HeaderMap, v: &Validators<'_>) -> bool {
    let Some(cond) = request.get(header::IF_RANGE) else { return true };
    let Ok(cond) = cond.to_str() else { return false };
    let cond = cond.trim();
    if cond.starts_with('"') || cond.starts_with("W/") {
        return !cond.starts_with("W/") && v.etag.is_some_and(|e| !e.starts_with("W/") && e == cond);
    }
    v.last_modified.is_some_and(|lm| lm.trim() == cond)
}

/// The ranges to answer for a representation of `len` bytes: `Full` without `Range`, when
/// `If-Range` does not hold, or when the header is unreadable.
pub fn requested_ranges(request: &HeaderMap, v: &Validators<'_>, len: u64) -> Ranges {
    let Some(spec) = request.get(header::RANGE).and_then(|v| v.to_str().ok()) else { return Ranges::Full };
    if !if_range_holds(request, v) {
        return Ranges::Full;
    }
    range::parse(spec, len)
}

fn list(request: &HeaderMap, name: header::HeaderName) -> impl Iterator<Item = &str> {
    request.get_all(name).into_iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).map(str::trim)
}

fn weak(tag: &str) -> &str {
    tag.trim().trim_start_matches("W/")
}

fn date(s: &str) -> Option<SystemTime> {
    httpdate::parse_http_date(s.trim()).ok()
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

    const LM: &str = "Tue, 01 Dec 2026 10:00:00 GMT";

    #[test]
    fn if_none_match_wins_and_compares_weakly() {
        let v = Validators { etag: Some("\"a\""), last_modified: Some(LM) };
        assert!(not_modified(&h(&[("if-none-match", "\"x\", W/\"a\"")]), &v));
        assert!(not_modified(&h(&[("if-none-match", "*")]), &v));
        assert!(not_modified(&h(&[("if-none-match", "*")]), &Validators::default()));
        // A non-matching If-None-Match is not rescued by a matching If-Modified-Since.
        assert!(!not_modified(&h(&[("if-none-match", "\"b\""), ("if-modified-since", LM)]), &v));
        assert!(!not_modified(&h(&[("if-none-match", "\"a\"")]), &Validators { etag: None, last_modified: Some(LM) }));
    }

    #[test]
    fn if_modified_since_compares_dates() {
        let v = Validators { etag: None, last_modified: Some(LM) };
        assert!(not_modified(&h(&[("if-modified-since", LM)]), &v));
        assert!(not_modified(&h(&[("if-modified-since", "Wed, 02 Dec 2026 10:00:00 GMT")]), &v));
        assert!(!not_modified(&h(&[("if-modified-since", "Mon, 30 Nov 2026 10:00:00 GMT")]), &v));
        assert!(!not_modified(&h(&[("if-modified-since", "yesterday")]), &v));
        assert!(!not_modified(&h(&[]), &v));
    }

    #[test]
    fn if_range_needs_a_strong_match() {
        let strong = Validators { etag: Some("\"a\""), last_modified: Some(LM) };
        let weak_etag = Validators { etag: Some("W/\"a\""), last_modified: None };
        let range =
            |ir: &str, v: &Validators<'_>| requested_ranges(&h(&[("range", "bytes=0-1"), ("if-range", ir)]), v, 10);
        assert_eq!(range("\"a\"", &strong), Ranges::Satisfiable(vec![(0, 1)]));
        assert_eq!(range("\"b\"", &strong), Ranges::Full);
        assert_eq!(range("W/\"a\"", &strong), Ranges::Full, "a weak tag never matches");
        assert_eq!(range("W/\"a\"", &weak_etag), Ranges::Full);
        assert_eq!(range("\"a\"", &weak_etag), Ranges::Full, "nor does a weak ETag");
        assert_eq!(range(LM, &strong), Ranges::Satisfiable(vec![(0, 1)]));
        assert_eq!(range("Wed, 02 Dec 2026 10:00:00 GMT", &strong), Ranges::Full);
        assert_eq!(requested_ranges(&h(&[("range", "bytes=0-1")]), &strong, 10), Ranges::Satisfiable(vec![(0, 1)]));
        assert_eq!(requested_ranges(&h(&[]), &strong, 10), Ranges::Full);
    }
}

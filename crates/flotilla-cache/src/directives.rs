//! Cache-Control parsing (RFC 9111 §5.2), shared by request and response directives, and the
//! CDN-Cache-Control override (RFC 9213).
//!
//! Parsing is deliberately forgiving in the safe direction: an unparseable `max-age` makes the
//! response stale (RFC 9111 §4.2.1: treat invalid freshness as expired), duplicated directives
//! keep the first value (§4.2.1 says to prefer the most restrictive; for ages that is the
//! smallest, which we take), and unknown directives are ignored.

use std::time::Duration;

use http::header::{HeaderMap, HeaderName};

/// The directives this cache acts on. `None` for an age means absent; `Some(ZERO)` also covers
/// present-but-invalid values, which count as "already stale".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheControl {
    pub max_age: Option<Duration>,
    pub s_maxage: Option<Duration>,
    pub max_stale: Option<Option<Duration>>,
    pub min_fresh: Option<Duration>,
    pub stale_while_revalidate: Option<Duration>,
    pub stale_if_error: Option<Duration>,
    pub no_store: bool,
    /// `no-cache` (a bare one; a field-qualified `no-cache="Set-Cookie"` is treated as bare:
    /// stricter, and allowed by §5.2.2.4).
    pub no_cache: bool,
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub must_understand: bool,
    pub no_transform: bool,
    pub only_if_cached: bool,
    pub immutable: bool,
}

impl CacheControl {
    /// Parses every `Cache-Control` field line of `headers` as one list.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        Self::from_named(headers, &http::header::CACHE_CONTROL)
    }

    /// Parses every field line named `name` (e.g. `cdn-cache-control`) as one list.
    pub fn from_named(headers: &HeaderMap, name: &HeaderName) -> Self {
        let mut cc = CacheControl::default();
        for value in headers.get_all(name) {
            // Non-UTF-8 bytes can only be in values we do not understand: parse lossily.
            cc.parse_into(&String::from_utf8_lossy(value.as_bytes()));
        }
        cc
    }

    /// The directives a shared CDN cache obeys for a response: `CDN-Cache-Control` when present
    /// (RFC 9213 §2.1: it then replaces `Cache-Control` for us), else `Cache-Control`.
    pub fn for_cdn(headers: &HeaderMap) -> Self {
        static CDN: HeaderName = HeaderName::from_static("cdn-cache-control");
        if headers.contains_key(&CDN) {
            Self::from_named(headers, &CDN)
        } else {
            Self::from_headers(headers)
        }
    }

    pub fn parse(s: &str) -> Self {
        let mut cc = CacheControl::default();
        cc.parse_into(s);
        cc
    }

    fn parse_into(&mut self, s: &str) {
        for (name, value) in split_directives(s) {
            let name = name.to_ascii_lowercase();
            match name.as_str() {
                "max-age" => merge_min(&mut self.max_age, seconds(value)),
                "s-maxage" => merge_min(&mut self.s_maxage, seconds(value)),
                "min-fresh" => merge_min(&mut self.min_fresh, seconds(value)),
                "stale-while-revalidate" => merge_min(&mut self.stale_while_revalidate, seconds(value)),
                "stale-if-error" => merge_min(&mut self.stale_if_error, seconds(value)),
                "max-stale" => {
                    // A bare max-stale accepts any staleness; with a value, that much.
                    let v = value.map(|_| seconds(value));
                    self.max_stale = match (self.max_stale, v) {
                        (Some(Some(a)), Some(b)) => Some(Some(a.min(b))),
                        (Some(prev), None) => Some(prev),
                        (_, v) => Some(v),
                    };
                }
                "no-store" => self.no_store = true,
                "no-cache" => self.no_cache = true,
                "private" => self.private = true,
                "public" => self.public = true,
                "must-revalidate" => self.must_revalidate = true,
                "proxy-revalidate" => self.proxy_revalidate = true,
                "must-understand" => self.must_understand = true,
                "no-transform" => self.no_transform = true,
                "only-if-cached" => self.only_if_cached = true,
                "immutable" => self.immutable = true,
                _ => {}
            }
        }
    }
}

/// The smallest value wins when a directive repeats (the most restrictive reading).
fn merge_min(slot: &mut Option<Duration>, v: Duration) {
    *slot = Some(slot.map_or(v, |old| old.min(v)));
}

/// delta-seconds (RFC 9111 §1.2.2): digits only; too large saturates at 2^31 s; anything
/// invalid is zero, which makes the response stale rather than fresh forever.
fn seconds(value: Option<&str>) -> Duration {
    let Some(v) = value else { return Duration::ZERO };
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Duration::ZERO;
    }
    let n = v.parse::<u64>().unwrap_or(u64::MAX).min(1 << 31);
    Duration::from_secs(n)
}

/// Splits a directive list on commas outside quoted strings; yields (name, unquoted value).
fn split_directives(s: &str) -> Vec<(&str, Option<&str>)> {
    let mut out = Vec::new();
    let bytes = s.as_bytes();
    let mut start = 0;
    let mut in_quotes = false;
    let mut i = 0;
    while i <= bytes.len() {
        let at_end = i == bytes.len();
        if !at_end && bytes[i] == b'"' {
            in_quotes = !in_quotes;
        } else if !at_end && bytes[i] == b'\\' && in_quotes {
            i += 1;
        } else if at_end || (bytes[i] == b',' && !in_quotes) {
            let item = s[start..i.min(s.len())].trim();
            if !item.is_empty() {
                let (name, value) = match item.split_once('=') {
                    Some((n, v)) => {
                        let v = v.trim();
                        let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v);
                        (n.trim(), Some(v))
                    }
                    None => (item, None),
                };
                out.push((name, value));
            }
            start = i + 1;
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: CacheControl) {
        assert_eq!(CacheControl::parse(input), expected, "{input:?}");
    }

    fn secs(n: u64) -> Option<Duration> {
        Some(Duration::from_secs(n))
    }

    #[test]
    fn directives() {
        check("max-age=60, public", CacheControl { max_age: secs(60), public: true, ..Default::default() });
        check("MAX-AGE=60", CacheControl { max_age: secs(60), ..Default::default() });
        check(
            "s-maxage=\"30\", max-age=5",
            CacheControl { s_maxage: secs(30), max_age: secs(5), ..Default::default() },
        );
        check(
            "no-store,no-cache , private",
            CacheControl { no_store: true, no_cache: true, private: true, ..Default::default() },
        );
        check(
            "no-cache=\"Set-Cookie, X-Foo\", max-age=10",
            CacheControl { no_cache: true, max_age: secs(10), ..Default::default() },
        );
        check(
            "stale-while-revalidate=30, stale-if-error=86400",
            CacheControl { stale_while_revalidate: secs(30), stale_if_error: secs(86400), ..Default::default() },
        );
        check("max-stale", CacheControl { max_stale: Some(None), ..Default::default() });
        check("max-stale=5", CacheControl { max_stale: Some(secs(5)), ..Default::default() });
        check("unknown, extension=\"a,b\", max-age=1", CacheControl { max_age: secs(1), ..Default::default() });
    }

    #[test]
    fn invalid_and_repeated_ages_are_read_restrictively() {
        check("max-age=abc", CacheControl { max_age: secs(0), ..Default::default() });
        check("max-age=-5", CacheControl { max_age: secs(0), ..Default::default() });
        check("max-age=", CacheControl { max_age: secs(0), ..Default::default() });
        check("max-age=60, max-age=10", CacheControl { max_age: secs(10), ..Default::default() });
        check("max-age=99999999999999999999", CacheControl { max_age: secs(1 << 31), ..Default::default() });
    }

    #[test]
    fn several_field_lines_form_one_list_and_cdn_cache_control_wins() {
        let mut h = HeaderMap::new();
        h.append("cache-control", "max-age=60".parse().unwrap());
        h.append("cache-control", "private".parse().unwrap());
        assert_eq!(
            CacheControl::from_headers(&h),
            CacheControl { max_age: secs(60), private: true, ..Default::default() }
        );
        h.insert("cdn-cache-control", "max-age=600".parse().unwrap());
        assert_eq!(CacheControl::for_cdn(&h), CacheControl { max_age: secs(600), ..Default::default() });
    }
}

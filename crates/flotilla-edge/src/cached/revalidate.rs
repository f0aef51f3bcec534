//! Revalidation: the client's own conditionals and ranges are kept out of the origin request
//! (they are answered from the stored object), the stored object's validators go in instead,
//! and a 304 refreshes the stored entry (RFC 9111 §4.3).

use std::time::SystemTime;

use flotilla_cache::freshness::{self, Freshness, Timing};
use flotilla_cache::{credentials, CacheControl, Entry};
use http::header::{self, HeaderMap};

use super::{owned_headers, tags};

/// Adds the stored response's validators to the origin request; false if it has none.
pub(super) fn add_validators(headers: &mut HeaderMap, stored: &Entry) -> bool {
    let mut any = false;
    if let Some(etag) = stored.headers.get(header::ETAG) {
        headers.insert(header::IF_NONE_MATCH, etag.clone());
        any = true;
    }
    if let Some(lm) = stored.headers.get(header::LAST_MODIFIED) {
        headers.insert(header::IF_MODIFIED_SINCE, lm.clone());
        any = true;
    }
    any
}

/// The stored entry updated by a 304 (RFC 9111 §4.3.4): its header fields replace the stored
/// ones (except framing), and freshness restarts from this exchange.
pub(super) fn refresh(
    old: &Entry,
    not_modified: &HeaderMap,
    request_time: SystemTime,
    behavior: &flotilla_cache::Behavior,
) -> Entry {
    let mut headers = old.headers.clone();
    for name in not_modified.keys() {
        // Framing, the validator itself, and per-message metadata stay as stored.
        if matches!(
            *name,
            header::CONTENT_LENGTH
                | header::TRANSFER_ENCODING
                | header::CONTENT_ENCODING
                | header::CONTENT_RANGE
                | header::ETAG
                | header::AGE
                | header::SET_COOKIE
        ) || matches!(name.as_str(), "cache-status" | "content-md5")
        {
            continue;
        }
        headers.remove(name);
        for v in not_modified.get_all(name) {
            headers.append(name.clone(), v.clone());
        }
    }
    let cc = CacheControl::for_cdn(&headers);
    let lifetime = freshness::lifetime(&cc, &headers, old.status, Some(behavior));
    let timing = Timing::new(request_time, SystemTime::now(), not_modified);
    Entry {
        shared: credentials::shared_explicitly(&cc, &headers),
        status: old.status,
        freshness: Freshness::new(&cc, lifetime, timing, Some(behavior)),
        secondary: old.secondary.clone(),
        vary: old.vary.clone(),
        encoded: old.encoded.clone(),
        host: old.host.clone(),
        path: old.path.clone(),
        tags: tags(&headers),
        body: old.body.clone(),
        headers: owned_headers(&headers),
    }
}

/// Request directives, with `Pragma: no-cache` standing in for a missing Cache-Control (§5.4).
pub(super) fn request_directives(headers: &HeaderMap) -> CacheControl {
    let mut cc = CacheControl::from_headers(headers);
    if !headers.contains_key(header::CACHE_CONTROL)
        && headers.get_all(header::PRAGMA).iter().any(|v| v.as_bytes().eq_ignore_ascii_case(b"no-cache"))
    {
        cc.no_cache = true;
    }
    cc
}

/// Removes the client's conditionals and ranges from what goes to the origin and returns the
/// client's original headers, against which they are evaluated on the stored response instead.
pub(super) fn strip_conditionals(headers: &mut HeaderMap) -> HeaderMap {
    let request = headers.clone();
    for h in [
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_MATCH,
        header::IF_UNMODIFIED_SINCE,
        header::RANGE,
        header::IF_RANGE,
    ] {
        headers.remove(h);
    }
    request
}

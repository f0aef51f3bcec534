//! Responses built from a stored entry: `Age`, `Cache-Status`, 304 for matching validators,
//! the client's preferred encoding, byte ranges.

use std::time::SystemTime;

use bytes::Bytes;
use flotilla_cache::conditional::{self, Validators};
use flotilla_cache::range::{self, Ranges};
use flotilla_cache::{key, Encoding, Entry};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::{Body as _, Incoming};

use crate::body::Body;
use crate::context::Outcome;
use crate::route::CacheRule;

pub(super) fn respond(entry: &Entry, req: &Request<Incoming>, cache_status: &str) -> Response<Body> {
    respond_with(entry, req.headers(), req.method() == Method::HEAD, cache_status)
}

/// A response built from a stored entry: `Age`, `Cache-Status`, and 304 when the client's
/// validator matches (RFC 9110 §13.1: If-None-Match first, else If-Modified-Since).
pub(super) fn respond_with(entry: &Entry, request: &HeaderMap, head: bool, cache_status: &str) -> Response<Body> {
    let mut headers = entry.headers.clone();
    let age = entry.freshness.timing.current_age(SystemTime::now()).as_secs();
    headers.insert(header::AGE, HeaderValue::from(age));
    if let Ok(v) = HeaderValue::from_str(cache_status) {
        headers.insert(CACHE_STATUS.clone(), v);
    }
    if entry.status == StatusCode::OK && not_modified(entry, request) {
        let mut resp = Response::new(empty());
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
        for h in [
            header::ETAG,
            header::CACHE_CONTROL,
            header::EXPIRES,
            header::VARY,
            header::DATE,
            header::CONTENT_LOCATION,
            header::AGE,
        ] {
            if let Some(v) = headers.get(&h) {
                resp.headers_mut().insert(h, v.clone());
            }
        }
        if let Some(v) = headers.get(&CACHE_STATUS) {
            resp.headers_mut().insert(CACHE_STATUS.clone(), v.clone());
        }
        return resp;
    }
    let encoded = if entry.encoded.is_empty() {
        None
    } else {
        let mut available: Vec<Encoding> = entry.encoded.iter().map(|(e, _)| *e).collect();
        available.push(Encoding::Identity);
        let pick = key::preferred_encoding(request, &available);
        entry.encoded.iter().find(|(e, _)| *e == pick)
    };
    if let Some((enc, gz)) = encoded {
        // A different representation: its own length, and a weak validator (RFC 9110 §8.8.1).
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(enc.as_str()));
        headers.remove(header::CONTENT_LENGTH);
        if let Some(etag) = headers.get(header::ETAG).filter(|e| !e.as_bytes().starts_with(b"W/")) {
            if let Ok(weak) = HeaderValue::from_bytes(&[b"W/", etag.as_bytes()].concat()) {
                headers.insert(header::ETAG, weak);
            }
        }
        let mut resp = Response::new(if head { empty() } else { full(gz.clone()) });
        *resp.status_mut() = entry.status;
        *resp.headers_mut() = headers;
        return resp;
    }
    if entry.status == StatusCode::OK {
        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        if let Some(range) = requested_range(entry, request) {
            return ranged(entry, headers, range, head);
        }
    }
    let body = if head { empty() } else { full(entry.body.clone()) };
    let mut resp = Response::new(body);
    *resp.status_mut() = entry.status;
    *resp.headers_mut() = headers;
    resp
}

/// The ranges the client asked for, if they apply to this entry (`If-Range` must match it).
fn requested_range(entry: &Entry, request: &HeaderMap) -> Option<Ranges> {
    if !request.contains_key(header::RANGE) {
        return None;
    }
    match conditional::requested_ranges(request, &Validators::of(&entry.headers), entry.body.len() as u64) {
        Ranges::Full => None,
        r => Some(r),
    }
}

/// 206 with one range, 206 `multipart/byteranges` with several, or 416.
fn ranged(entry: &Entry, mut headers: HeaderMap, ranges: Ranges, head: bool) -> Response<Body> {
    let len = entry.body.len() as u64;
    headers.remove(header::CONTENT_LENGTH);
    let (status, body) = match ranges {
        Ranges::Satisfiable(r) if r.len() == 1 => {
            let (a, b) = r[0];
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {a}-{b}/{len}")) {
                headers.insert(header::CONTENT_RANGE, v);
            }
            (StatusCode::PARTIAL_CONTENT, entry.body.slice(a as usize..=b as usize))
        }
        Ranges::Satisfiable(r) => {
            let ctype = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
            let (boundary, body) = range::multipart(&entry.body, &r, ctype.as_deref(), fastrand::u64(..));
            if let Ok(v) = HeaderValue::from_str(&format!("multipart/byteranges; boundary={boundary}")) {
                headers.insert(header::CONTENT_TYPE, v);
            }
            (StatusCode::PARTIAL_CONTENT, body)
        }
        Ranges::Unsatisfiable | Ranges::Full => {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                headers.insert(header::CONTENT_RANGE, v);
            }
            (StatusCode::RANGE_NOT_SATISFIABLE, Bytes::new())
        }
    };
    let mut resp = Response::new(if head { empty() } else { full(body) });
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

fn not_modified(entry: &Entry, request: &HeaderMap) -> bool {
    // Most requests carry no conditional: two lookups, and the entry's validators only then.
    (request.contains_key(header::IF_NONE_MATCH) || request.contains_key(header::IF_MODIFIED_SINCE))
        && conditional::not_modified(request, &Validators::of(&entry.headers))
}

static CACHE_STATUS: header::HeaderName = header::HeaderName::from_static("cache-status");

/// Counts the body of a response answered from a stored entry (bytes the origin did not send).
pub(super) fn from_cache(rule: &CacheRule, out: &mut Outcome, resp: Response<Body>) -> Response<Body> {
    out.source = crate::metrics::Source::Cache;
    rule.cache_bytes.inc_by(resp.body().size_hint().exact().unwrap_or(0));
    resp
}

pub(super) fn with_cache_status(mut resp: Response<Body>, status: &str) -> Response<Body> {
    if let Ok(v) = HeaderValue::from_str(status) {
        resp.headers_mut().insert(CACHE_STATUS.clone(), v);
    }
    resp
}

pub(super) fn gateway_timeout_only_if_cached() -> Response<Body> {
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::GATEWAY_TIMEOUT;
    with_cache_status(resp, "flotilla; fwd=miss; detail=only-if-cached")
}

pub(super) use crate::body::{empty, full};

pub(super) fn parts_with(status: StatusCode, headers: HeaderMap) -> http::response::Parts {
    let (mut parts, ()) = Response::new(()).into_parts();
    parts.status = status;
    parts.headers = headers;
    parts
}

//! The cache layer for routes with a cache behaviour: look up → serve a fresh hit, or fetch from
//! the origin once per key however many requests miss at the same moment (coalescing), store
//! what RFC 9111 allows, and answer with `Age` and `Cache-Status` (RFC 9211).
//!
//! Stale entries are revalidated with their validators (a 304 refreshes them), in the request or,
//! within stale-while-revalidate, in the background; single ranges come from the stored object.
//! Behind the memory tier sits an optional disk tier (`flotilla_cache::disk`): misses look
//! there before the origin, and stored entries are written to it in the background.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use flotilla_cache::freshness::{self, Freshness, Timing};
use flotilla_cache::range::{self, Ranges};
use flotilla_cache::storable::{self, Exchange};
use flotilla_cache::{
    compress, credentials, key, CacheControl, Decision, DiskStore, Encoding, Entry, Lookup, MemoryStore, NotStored,
    OtherCookies, PathMatch,
};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as _, Frame, Incoming};
use tokio::sync::watch;

use crate::error::ProxyError;
use crate::proxy::{origin, Body, BoxError, Origin, Outcome};
use crate::route::CacheRule;
use crate::Shared;

/// Keys whose last response could not be stored skip coalescing for this long, so uncacheable
/// URLs are not fetched one request at a time (Varnish's hit-for-miss).
const PASS_FOR: Duration = Duration::from_secs(10);

/// Shared by all workers: the store, in-flight fetches, recent invalidations.
pub(crate) struct EdgeCache {
    pub store: MemoryStore,
    /// The disk tier, when configured and its directory could be opened.
    pub disk: Option<Arc<DiskStore>>,
    max_object: usize,
    inflight: Mutex<HashMap<String, watch::Receiver<bool>>>,
    pass: moka::sync::Cache<String, ()>,
    invalidations: Mutex<VecDeque<Invalidation>>,
    next_id: AtomicU64,
}

/// One applied invalidation, as the admin API reports it.
#[derive(Debug, Clone)]
pub struct Invalidation {
    pub id: u64,
    pub paths: Vec<String>,
    pub tags: Vec<String>,
    pub all: bool,
    pub created_at: SystemTime,
    pub duration: Duration,
}

enum Join {
    Leader(Flight),
    Follower(watch::Receiver<bool>),
}

/// The leader's claim on a key; dropping it (however the fetch ends) wakes the followers. It
/// owns the shared state so a background refresh can hold it beyond the request.
struct Flight {
    shared: Arc<Shared>,
    key: String,
    done: watch::Sender<bool>,
}

impl Drop for Flight {
    fn drop(&mut self) {
        self.shared.cache.inflight.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.key);
        let _ = self.done.send(true);
    }
}

fn join(shared: &Arc<Shared>, key: &str) -> Join {
    let mut map = shared.cache.inflight.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(rx) = map.get(key) {
        return Join::Follower(rx.clone());
    }
    let (tx, rx) = watch::channel(false);
    map.insert(key.to_string(), rx);
    Join::Leader(Flight { shared: shared.clone(), key: key.to_string(), done: tx })
}

impl EdgeCache {
    pub(crate) fn new(cfg: &flotilla_config::CacheConfig) -> Self {
        let disk = cfg.disk.as_ref().and_then(|d| match DiskStore::open(&d.path, d.size) {
            Ok(store) => {
                let (objects, bytes) = store.usage();
                tracing::info!(path = %d.path.display(), objects, bytes, "cache disk tier opened");
                Some(Arc::new(store))
            }
            Err(e) => {
                // Degrade to memory only: the edge keeps serving.
                tracing::error!(error = %e, "cache disk tier unavailable; caching in memory only");
                None
            }
        });
        Self {
            store: MemoryStore::new(cfg.memory),
            disk,
            max_object: cfg.max_object.min(usize::MAX as u64) as usize,
            inflight: Mutex::new(HashMap::new()),
            pass: moka::sync::Cache::builder().max_capacity(100_000).time_to_live(PASS_FOR).build(),
            invalidations: Mutex::new(VecDeque::new()),
            next_id: AtomicU64::new(1),
        }
    }

    /// Applies an invalidation before returning (lookups stop seeing matching entries at once).
    pub(crate) fn invalidate(&self, paths: Vec<String>, tags: Vec<String>, all: bool) -> Invalidation {
        let started = std::time::Instant::now();
        if all {
            self.store.invalidate_all();
            if let Some(d) = &self.disk {
                d.invalidate_all();
            }
        } else {
            if !paths.is_empty() {
                let matches: Vec<PathMatch> = paths.iter().map(|p| PathMatch::parse(p)).collect();
                if let Some(d) = &self.disk {
                    d.invalidate_paths(&matches);
                }
                self.store.invalidate_paths(matches);
            }
            if !tags.is_empty() {
                if let Some(d) = &self.disk {
                    d.invalidate_tags(&tags);
                }
                self.store.invalidate_tags(tags.clone());
            }
        }
        let record = Invalidation {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            paths,
            tags,
            all,
            created_at: SystemTime::now(),
            duration: started.elapsed(),
        };
        let mut log = self.invalidations.lock().unwrap_or_else(|e| e.into_inner());
        if log.len() >= 1000 {
            log.pop_front();
        }
        log.push_back(record.clone());
        record
    }

    /// Memory first; on a miss, the disk tier (off the runtime), promoting what it finds.
    async fn lookup(&self, primary: &str, request: &HeaderMap) -> Lookup {
        let found = self.store.lookup(primary, request);
        let Some(disk) = self.disk.clone().filter(|_| !matches!(found, Lookup::Hit(_))) else { return found };
        // The index answers most misses without I/O; only a stored object is read, off the runtime.
        let Some(at) = disk.locate(primary, request) else { return found };
        match tokio::task::spawn_blocking(move || disk.read(at)).await {
            Ok(Some((entry, vary))) => {
                let entry = Arc::new(entry);
                self.store.insert_arc(primary.to_string(), vary, entry.clone());
                Lookup::Hit(entry)
            }
            _ => found,
        }
    }

    /// Writes a stored entry to the disk tier in the background (the response does not wait).
    fn persist(&self, primary: &str, vary: Vec<header::HeaderName>, entry: Arc<Entry>) {
        let Some(disk) = self.disk.clone() else { return };
        let primary = primary.to_string();
        tokio::task::spawn_blocking(move || {
            let before = disk.errors.load(Ordering::Relaxed);
            disk.insert(&primary, &vary, &entry);
            if disk.errors.load(Ordering::Relaxed) != before {
                let e = disk.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone();
                tracing::warn!(error = e.as_deref().unwrap_or("?"), "cache disk write failed; the memory copy stays");
            }
        });
    }

    /// Drops one URL's variants from both tiers by key: O(1) for the memory tier and O(variants)
    /// for the disk index, because it runs after every successful unsafe request (a predicate
    /// per POST would pile up in moka and be re-checked on every hit).
    fn remove(&self, primary: &str) {
        self.store.remove(primary);
        if let Some(d) = &self.disk {
            d.remove(primary);
        }
    }

    pub(crate) fn invalidation(&self, id: u64) -> Option<Invalidation> {
        self.invalidations.lock().unwrap_or_else(|e| e.into_inner()).iter().find(|i| i.id == id).cloned()
    }
}

/// Serves one request on a cached route.
pub(crate) async fn serve(
    cx: Origin<'_>,
    rule: &Arc<CacheRule>,
    mut req: Request<Incoming>,
    out: &mut Outcome,
) -> Result<Response<Body>, ProxyError> {
    let cache = &cx.shared.cache;
    let path = req.uri().path().to_string();
    let own = own_cookie(&cx);
    if rule.other_cookies == OtherCookies::Strip {
        credentials::strip_other_cookies(req.headers_mut(), &rule.key.cookies, own.as_deref());
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let primary = key::primary(&rule.key, &cx.key_host(), &path, req.uri().query(), req.headers());
        let request_headers = req.headers().clone();
        let resp = origin(cx, req, out).await?;
        if resp.status().is_success() || resp.status().is_redirection() {
            // RFC 9111 §4.4: a successful unsafe request invalidates the target URI, and the
            // URIs in Location and Content-Location when they are on the same host.
            cache.remove(&primary);
            for h in [header::LOCATION, header::CONTENT_LOCATION] {
                if let Some(uri) = resp.headers().get(&h).and_then(|v| same_host_uri(v, cx.host)) {
                    cache.remove(&key::primary(&rule.key, &cx.key_host(), uri.path(), uri.query(), &request_headers));
                }
            }
        }
        return Ok(with_cache_status(resp, "flotilla; fwd=method"));
    }
    let primary = key::primary(&rule.key, &cx.key_host(), &path, req.uri().query(), req.headers());
    let req_cc = request_directives(req.headers());
    // A request that speaks for someone is answered only from what the origin marked as shared,
    // and never coalesced: its response may be that person's alone.
    let credentialed = credentials::carries_credentials(req.headers(), &rule.key.cookies, own.as_deref());
    let mut collapsed = false;
    let (stale, fwd, _flight) = loop {
        let (found, fwd) = match cache.lookup(&primary, req.headers()).await {
            Lookup::Hit(e) if !credentialed || e.shared => (Some(e), "stale"),
            _ if credentialed => (None, "bypass"),
            Lookup::VaryMiss => (None, "vary-miss"),
            _ => (None, "miss"),
        };
        if let Some(e) = &found {
            match e.freshness.decide(&req_cc, SystemTime::now()) {
                Decision::Fresh { ttl } => {
                    rule.hits.inc();
                    let status =
                        format!("flotilla; hit; ttl={}{}", ttl.as_secs(), if collapsed { "; collapsed" } else { "" });
                    return Ok(from_cache(rule, respond(e, &req, &status)));
                }
                Decision::StaleAllowed => {
                    rule.stale.inc();
                    let over = e.freshness.timing.current_age(SystemTime::now()).saturating_sub(e.freshness.lifetime);
                    return Ok(from_cache(rule, respond(e, &req, &format!("flotilla; hit; ttl=-{}", over.as_secs()))));
                }
                Decision::StaleWhileRevalidate => {
                    rule.stale.inc();
                    if let Join::Leader(flight) = join(cx.shared, &primary) {
                        refresh_in_background(cx, rule, flight, &req, e.clone(), primary.clone(), path.clone());
                    }
                    let over = e.freshness.timing.current_age(SystemTime::now()).saturating_sub(e.freshness.lifetime);
                    let status = format!("flotilla; hit; ttl=-{}; detail=stale-while-revalidate", over.as_secs());
                    return Ok(from_cache(rule, respond(e, &req, &status)));
                }
                Decision::Revalidate => {}
            }
        }
        let fwd = if req_cc.no_cache && found.is_some() { "request" } else { fwd };
        if req_cc.only_if_cached {
            return Ok(gateway_timeout_only_if_cached());
        }
        if credentialed || cache.pass.contains_key(&primary) {
            break (found, fwd, None);
        }
        match join(cx.shared, &primary) {
            Join::Leader(flight) => break (found, fwd, Some(flight)),
            Join::Follower(mut rx) => {
                collapsed = true;
                let _ = tokio::time::timeout(cx.rt.timeouts.target_response, rx.wait_for(|done| *done)).await;
            }
        }
    };

    // Ask for the full object: the client's own validators and ranges are answered from it.
    let client_conditions = strip_conditionals(req.headers_mut());
    // A stale entry with validators is revalidated: a 304 refreshes it without a new body.
    let revalidating = stale.as_ref().is_some_and(|s| add_validators(req.headers_mut(), s));
    let request_time = SystemTime::now();
    let head = req.method() == Method::HEAD;
    let fetched = match crate::shield::via_parent(&cx, &req, out).await {
        Some(resp) => Ok(resp),
        None => origin(cx, req, out).await,
    };
    let resp = match fetched {
        Ok(r) => r,
        Err(e) => {
            if let Some(s) = stale.as_ref().filter(|s| s.freshness.usable_on_error(SystemTime::now())) {
                rule.stale.inc();
                return Ok(from_cache(
                    rule,
                    respond_with(s, &client_conditions, head, "flotilla; fwd=stale; detail=stale-if-error"),
                ));
            }
            return Err(e);
        }
    };
    if resp.status().is_server_error() {
        if let Some(s) = stale.as_ref().filter(|s| s.freshness.usable_on_error(SystemTime::now())) {
            rule.stale.inc();
            let status = format!("flotilla; fwd=stale; fwd-status={}; detail=stale-if-error", resp.status().as_u16());
            return Ok(from_cache(rule, respond_with(s, &client_conditions, head, &status)));
        }
    }
    let fetch = Fetch { primary: &primary, path, request_headers: &client_conditions, own: own.as_deref(), head };
    let settled = settle(cx, rule, fetch, request_time, stale.as_ref(), revalidating, resp).await?;
    Ok(match settled {
        Settled::Refreshed(e, cookies) => {
            rule.hits.inc();
            let status = "flotilla; fwd=stale; fwd-status=304; stored";
            with_cookies(from_cache(rule, respond_with(&e, &client_conditions, head, status)), cookies)
        }
        Settled::Stored(e, cookies) => {
            rule.misses.inc();
            rule.origin_bytes.inc_by(e.body.len() as u64);
            let status = format!("flotilla; fwd={fwd}; stored");
            with_cookies(respond_with(&e, &client_conditions, false, &status), cookies)
        }
        Settled::Passed(resp, detail) => {
            rule.misses.inc();
            let declared =
                resp.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            rule.origin_bytes.inc_by(declared.or(resp.body().size_hint().exact()).unwrap_or(0));
            with_cache_status(resp, &format!("flotilla; fwd={fwd}; detail={detail}"))
        }
    })
}

/// What became of an origin response.
enum Settled {
    /// A 304 refreshed the stored entry; the `Set-Cookie` lines are the requesting client's.
    Refreshed(Arc<Entry>, Vec<HeaderValue>),
    /// Stored; the edge's own `Set-Cookie` lines (sticky cookie) go to the requesting client only.
    Stored(Arc<Entry>, Vec<HeaderValue>),
    /// Not stored (the detail says why); the response streams through.
    Passed(Response<Body>, &'static str),
}

/// The request an origin response answers, as `settle` needs it.
struct Fetch<'a> {
    primary: &'a str,
    path: String,
    /// The client's headers (with its own conditionals and ranges).
    request_headers: &'a HeaderMap,
    /// The edge's sticky cookie name, when the route's group sets one.
    own: Option<&'a str>,
    head: bool,
}

/// The sticky cookie the edge itself sets for this route's group: it picks a target, never a
/// page, so it is no one's credential and its `Set-Cookie` does not make a response private.
fn own_cookie(cx: &Origin<'_>) -> Option<String> {
    match cx.backend {
        crate::proxy::Backend::Group(g) => {
            let cfg = g.config();
            cfg.stickiness.enabled.then(|| cfg.stickiness.cookie.clone())
        }
        _ => None,
    }
}

fn with_cookies(mut resp: Response<Body>, cookies: Vec<HeaderValue>) -> Response<Body> {
    for c in cookies {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    resp
}

/// Stores what may be stored and refreshes on 304; shared by requests and background refreshes.
/// The edge's own sticky `Set-Cookie` is set aside first (it is this client's, and must not
/// keep the response from being stored), and given back to this client whatever happens.
async fn settle(
    cx: Origin<'_>,
    rule: &CacheRule,
    fetch: Fetch<'_>,
    request_time: SystemTime,
    stale: Option<&Arc<Entry>>,
    revalidating: bool,
    mut resp: Response<Body>,
) -> Result<Settled, ProxyError> {
    let own_lines = fetch.own.map(|o| credentials::take_own_set_cookies(resp.headers_mut(), o)).unwrap_or_default();
    Ok(match settle_inner(cx, rule, fetch, request_time, stale, revalidating, resp).await? {
        Settled::Refreshed(e, mut cookies) => {
            cookies.extend(own_lines);
            Settled::Refreshed(e, cookies)
        }
        Settled::Stored(e, _) => Settled::Stored(e, own_lines),
        Settled::Passed(resp, detail) => Settled::Passed(with_cookies(resp, own_lines), detail),
    })
}

async fn settle_inner(
    cx: Origin<'_>,
    rule: &CacheRule,
    fetch: Fetch<'_>,
    request_time: SystemTime,
    stale: Option<&Arc<Entry>>,
    revalidating: bool,
    resp: Response<Body>,
) -> Result<Settled, ProxyError> {
    let cache = &cx.shared.cache;
    let Fetch { primary, path, request_headers, own, head } = fetch;
    if revalidating && resp.status() == StatusCode::NOT_MODIFIED {
        if let Some(old) = stale {
            let refreshed = Arc::new(refresh(old, resp.headers(), request_time, &rule.behavior));
            cache.store.insert_arc(primary.to_string(), refreshed.vary.clone(), refreshed.clone());
            cache.persist(primary, refreshed.vary.clone(), refreshed.clone());
            // A 304 may set cookies for the client that asked; they are never stored.
            let cookies = resp.headers().get_all(header::SET_COOKIE).iter().cloned().collect();
            return Ok(Settled::Refreshed(refreshed, cookies));
        }
    }
    let cc = CacheControl::for_cdn(resp.headers());
    let verdict = storable::check(&Exchange {
        method: if head { &Method::HEAD } else { &Method::GET },
        request_headers,
        status: resp.status(),
        response_headers: resp.headers(),
        response_cc: &cc,
        behavior: Some(&rule.behavior),
        cookies: credentials::other_cookies(request_headers, &rule.key.cookies, own),
    })
    .and_then(|()| match stale {
        // A client may force a revalidation and craft it so the origin fails: that error is
        // this client's, the stored object stays (stale-if-error was handled by the caller).
        Some(s)
            if !storable::may_replace(
                s.status,
                &s.freshness,
                resp.status(),
                storable::explicit_freshness(&cc, resp.headers()),
                SystemTime::now(),
            ) =>
        {
            Err(NotStored::KeptStored)
        }
        _ => Ok(()),
    });
    let too_big = resp.body().size_hint().exact().is_some_and(|n| n > cache.max_object as u64);
    if head || too_big || verdict.is_err() {
        let detail = match verdict {
            Err(reason) => reason.as_str(),
            Ok(()) if head => "head",
            Ok(()) => "too-large",
        };
        // Remember response-side reasons so the next requests for this key skip coalescing; not
        // request-side ones (credentials, errors one request can provoke).
        if !matches!(
            verdict,
            Err(NotStored::Authorization
                | NotStored::Cookie
                | NotStored::RequestNoStore
                | NotStored::Error
                | NotStored::KeptStored)
        ) {
            cache.pass.insert(primary.to_string(), ());
            rule.passes.inc();
        }
        return Ok(Settled::Passed(resp, detail));
    }
    let (parts, body) = resp.into_parts();
    let bytes = match collect_bounded(body, cache.max_object).await {
        Collected::All(b) => b,
        Collected::TooLarge(prefix, rest) => {
            cache.pass.insert(primary.to_string(), ());
            let body = PrefixBody { prefix: Some(prefix), rest }.boxed_unsync();
            return Ok(Settled::Passed(Response::from_parts(parts, body), "too-large"));
        }
        Collected::Failed(e) => {
            tracing::debug!(error = %e, "origin body failed while caching");
            return Err(ProxyError::TargetReset);
        }
    };
    // The age is taken from the origin's Age/Date before Age is dropped from what is stored
    // (responses carry the current age computed at serve time).
    let timing = Timing::new(request_time, SystemTime::now(), &parts.headers);
    let mut headers = parts.headers;
    headers.remove(header::AGE);
    let Some(vary) = key::vary_names(&headers) else {
        return Ok(Settled::Passed(Response::from_parts(parts_with(parts.status, headers), full(bytes)), "vary-star"));
    };
    let lifetime = freshness::lifetime(&cc, &headers, parts.status, Some(&rule.behavior));
    let encoded = if rule.compress && compress::compressible(&headers, &cc) {
        let raw = bytes.clone();
        tokio::task::spawn_blocking(move || compress::all(&raw)).await.unwrap_or_default()
    } else {
        Vec::new()
    };
    if !encoded.is_empty() && !vary.contains(&header::ACCEPT_ENCODING) {
        // Downstream caches must know the representation depends on Accept-Encoding; our own
        // key does not (both representations live in this one entry).
        headers.append(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
    let entry = Arc::new(Entry {
        status: parts.status,
        secondary: key::secondary(&vary, request_headers),
        vary: vary.clone(),
        encoded,
        host: cx.host.to_string(),
        path,
        tags: tags(&headers),
        freshness: Freshness::new(&cc, lifetime, timing, Some(&rule.behavior)),
        shared: credentials::shared_explicitly(&cc, &headers),
        headers: owned_headers(&headers),
        body: bytes,
    });
    cache.store.insert_arc(primary.to_string(), vary.clone(), entry.clone());
    cache.persist(primary, vary, entry.clone());
    Ok(Settled::Stored(entry, Vec::new()))
}

/// stale-while-revalidate: the client already has the stale copy; refresh it off the request.
/// The flight keeps concurrent requests from starting refreshes of their own.
fn refresh_in_background(
    cx: Origin<'_>,
    rule: &Arc<CacheRule>,
    flight: Flight,
    req: &Request<Incoming>,
    stale: Arc<Entry>,
    primary: String,
    path: String,
) {
    let mut headers = req.headers().clone();
    let request_headers = strip_conditionals(&mut headers);
    let revalidating = add_validators(&mut headers, &stale);
    let mut background = Request::new(http_body_util::Empty::<Bytes>::new());
    *background.uri_mut() = req.uri().clone();
    *background.headers_mut() = headers;
    let (shared, rt, conn, client) = (cx.shared.clone(), cx.rt.clone(), cx.conn.clone(), cx.client.clone());
    let backend = cx.backend.to_owned();
    let (host, rid, rule) = (cx.host.to_string(), cx.rid.clone(), rule.clone());
    tokio::spawn(async move {
        let _flight = flight;
        let backend = backend.borrow();
        let cx = Origin { shared: &shared, rt: &rt, conn: &conn, client: &client, backend, host: &host, rid: &rid };
        let request_time = SystemTime::now();
        let own = own_cookie(&cx);
        let fetch =
            Fetch { primary: &primary, path, request_headers: &request_headers, own: own.as_deref(), head: false };
        let result = match origin(cx, background, &mut Outcome::default()).await {
            // Any Set-Cookie for the client is dropped: it already has its answer.
            Ok(resp) => settle(cx, &rule, fetch, request_time, Some(&stale), revalidating, resp).await.map(|_| ()),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::debug!(key = %primary, error = ?e, "background refresh failed; the stale copy stays");
        }
    });
}

/// The path of a Location-style URI reference if it points at `host` (or is relative).
fn same_host_uri(v: &HeaderValue, host: &str) -> Option<http::Uri> {
    let uri: http::Uri = v.to_str().ok()?.parse().ok()?;
    match uri.host() {
        Some(h) if !h.eq_ignore_ascii_case(host) => None,
        _ if uri.path().starts_with('/') => Some(uri),
        _ => None,
    }
}

/// Adds the stored response's validators to the origin request; false if it has none.
fn add_validators(headers: &mut HeaderMap, stored: &Entry) -> bool {
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
fn refresh(
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

/// A copy of `headers` whose values own their bytes. hyper parses a response head into values
/// that share its connection's read buffer (8 KiB and up), so a stored entry holding them pins
/// that whole buffer: 40 000 small cached objects cost 300 MB instead of 30 MB before this.
fn owned_headers(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let mut owned = HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
        owned.set_sensitive(value.is_sensitive());
        out.append(name.clone(), owned);
    }
    out
}

/// Request directives, with `Pragma: no-cache` standing in for a missing Cache-Control (§5.4).
fn request_directives(headers: &HeaderMap) -> CacheControl {
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
fn strip_conditionals(headers: &mut HeaderMap) -> HeaderMap {
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

fn respond(entry: &Entry, req: &Request<Incoming>, cache_status: &str) -> Response<Body> {
    respond_with(entry, req.headers(), req.method() == Method::HEAD, cache_status)
}

/// A response built from a stored entry: `Age`, `Cache-Status`, and 304 when the client's
/// validator matches (RFC 9110 §13.1: If-None-Match first, else If-Modified-Since).
fn respond_with(entry: &Entry, request: &HeaderMap, head: bool, cache_status: &str) -> Response<Body> {
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

/// The ranges the client asked for, if they apply to this entry (RFC 9110 §14): `If-Range`
/// must match the stored validator (strongly), else the whole body is sent.
fn requested_range(entry: &Entry, request: &HeaderMap) -> Option<Ranges> {
    let spec = request.get(header::RANGE)?.to_str().ok()?;
    if let Some(if_range) = request.get(header::IF_RANGE) {
        let matches_etag =
            entry.headers.get(header::ETAG).is_some_and(|e| e == if_range && !e.as_bytes().starts_with(b"W/"));
        let matches_date = entry.headers.get(header::LAST_MODIFIED).is_some_and(|lm| lm == if_range);
        if !(matches_etag || matches_date) {
            return None;
        }
    }
    match range::parse(spec, entry.body.len() as u64) {
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
    if let Some(inm) = request.get(header::IF_NONE_MATCH) {
        let Some(etag) = entry.headers.get(header::ETAG).and_then(|e| e.to_str().ok()) else { return false };
        let weak = |t: &str| t.trim().trim_start_matches("W/").to_string();
        return inm.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim() == "*" || weak(t) == weak(etag)));
    }
    if let (Some(ims), Some(lm)) = (request.get(header::IF_MODIFIED_SINCE), entry.headers.get(header::LAST_MODIFIED)) {
        if let (Some(ims), Some(lm)) = (freshness::http_date(ims), freshness::http_date(lm)) {
            return lm <= ims;
        }
    }
    false
}

static CACHE_STATUS: header::HeaderName = header::HeaderName::from_static("cache-status");

/// Counts the body of a response answered from a stored entry (bytes the origin did not send).
fn from_cache(rule: &CacheRule, resp: Response<Body>) -> Response<Body> {
    rule.cache_bytes.inc_by(resp.body().size_hint().exact().unwrap_or(0));
    resp
}

fn with_cache_status(mut resp: Response<Body>, status: &str) -> Response<Body> {
    if let Ok(v) = HeaderValue::from_str(status) {
        resp.headers_mut().insert(CACHE_STATUS.clone(), v);
    }
    resp
}

fn gateway_timeout_only_if_cached() -> Response<Body> {
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::GATEWAY_TIMEOUT;
    with_cache_status(resp, "flotilla; fwd=miss; detail=only-if-cached")
}

/// `Surrogate-Key` (space-separated) and `Cache-Tag` (comma-separated) values.
fn tags(headers: &HeaderMap) -> Vec<String> {
    let mut out = Vec::new();
    for v in headers.get_all("surrogate-key").iter().filter_map(|v| v.to_str().ok()) {
        out.extend(v.split_ascii_whitespace().map(String::from));
    }
    for v in headers.get_all("cache-tag").iter().filter_map(|v| v.to_str().ok()) {
        out.extend(v.split(',').map(|t| t.trim().to_string()).filter(|t| !t.is_empty()));
    }
    out
}

fn empty() -> Body {
    crate::proxy::empty()
}

fn full(b: Bytes) -> Body {
    Full::new(b).map_err(|e| match e {}).boxed_unsync()
}

fn parts_with(status: StatusCode, headers: HeaderMap) -> http::response::Parts {
    let (mut parts, ()) = Response::new(()).into_parts();
    parts.status = status;
    parts.headers = headers;
    parts
}

pub(crate) enum Collected {
    All(Bytes),
    /// Over the limit: what was read so far, and the rest, to stream on uncached.
    TooLarge(Bytes, Body),
    Failed(BoxError),
}

/// Reads a body up to `limit` bytes (shared with the image route's originals).
pub(crate) async fn collect_bounded(mut body: Body, limit: usize) -> Collected {
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Ok(data) = f.into_data() {
                    buf.extend_from_slice(&data);
                    if buf.len() > limit {
                        return Collected::TooLarge(buf.freeze(), body);
                    }
                }
            }
            Err(e) => return Collected::Failed(e),
        }
    }
    // Doubling growth can leave up to half the capacity unused, and what is collected here is
    // often kept (cached): give it back rather than pin it.
    if buf.capacity() - buf.len() > buf.len() / 4 {
        return Collected::All(Bytes::copy_from_slice(&buf));
    }
    Collected::All(buf.freeze())
}

/// Bytes already read, then the rest of the stream.
struct PrefixBody {
    prefix: Option<Bytes>,
    rest: Body,
}

impl hyper::body::Body for PrefixBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(p) = self.prefix.take() {
            return std::task::Poll::Ready(Some(Ok(Frame::data(p))));
        }
        std::pin::Pin::new(&mut self.rest).poll_frame(cx)
    }
}
